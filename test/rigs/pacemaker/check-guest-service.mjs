#!/usr/bin/env node
// Is the demo service in a vesper test guest running? Asks the guest's fault helper ("svc")
// over its virtio-serial test port and exits 0 when it is, 1 otherwise, with one line on stderr
// saying why. Written for Pacemaker's VirtualDomain monitor_scripts, which runs each entry as
// root, with no arguments, inside the monitor's own timeout: so the socket also comes from the
// environment, nothing here needs a build or a package, and every wait is bounded.
//
//   check-guest-service.mjs [SOCKET]      (or VESPER_GUEST_TEST_SOCKET=SOCKET)
//   VESPER_GUEST_CHECK_TIMEOUT_MS         overall limit, default 5000
import { statSync } from 'node:fs';
import * as net from 'node:net';

const socketPath = process.argv[2] || process.env.VESPER_GUEST_TEST_SOCKET || '';
const timeoutMs = Number(process.env.VESPER_GUEST_CHECK_TIMEOUT_MS) > 0 ? Number(process.env.VESPER_GUEST_CHECK_TIMEOUT_MS) : 5000;
// QEMU's chardev serves one client at a time and the guest's answer to a client that gave up
// goes to the next one, so the tag tells this run's answer from a late one.
const tag = `c${process.pid}-${Date.now().toString(36)}`;
const deadline = Date.now() + timeoutMs;
let finished = false;

function finish(code, line) {
  if (finished) return;
  finished = true;
  (code === 0 ? process.stdout : process.stderr).write(`${code === 0 ? '' : 'check-guest-service: '}${line}\n`);
  process.exit(code);
}

if (!socketPath) finish(1, 'no test socket: give its path as the first argument or in VESPER_GUEST_TEST_SOCKET');
try {
  if (!statSync(socketPath).isSocket()) finish(1, `${socketPath} is not a socket`);
} catch (err) {
  finish(1, `test socket ${socketPath} missing (${err.code ?? err.message}): is the guest running?`);
}

setTimeout(
  () => finish(1, `the guest did not answer "svc" within ${timeoutMs} ms on ${socketPath} (busy, hung or still booting)`),
  timeoutMs,
);

function attempt() {
  const s = net.createConnection(socketPath);
  let buf = '';
  s.on('connect', () => s.write(`svc ${tag}\n`));
  s.on('data', (chunk) => {
    buf += chunk.toString('latin1');
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      const words = line.split(/\s+/);
      if (words[1] !== 'svc' || words[words.length - 1] !== tag) continue; // someone else's answer
      s.destroy();
      const answer = words.slice(0, -1).join(' ');
      if (words[0] === 'ok') finish(0, answer);
      else finish(1, `the guest's demo service is not running (${answer})`);
    }
    if (buf.length > 65536) finish(1, 'the test port sends no line breaks: not a vesper fault helper?');
  });
  s.on('error', (err) => {
    s.destroy();
    // EAGAIN: another client holds the port and QEMU's backlog is full; it frees up soon.
    if (err.code === 'EAGAIN' && Date.now() + 200 < deadline) setTimeout(attempt, 100);
    else finish(1, `cannot reach the guest's test port ${socketPath}: ${err.message}`);
  });
  s.on('close', (hadError) => {
    if (!hadError) finish(1, `the test port ${socketPath} closed before the guest answered`);
  });
}

attempt();
