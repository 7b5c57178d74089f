// FenceLock on a real directory: in one process (holding, refusing, releasing, renewing,
// taking over stale leases and stale claims), and between two real processes racing for the
// same keys round after round, free and stale ones.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FenceLock, fileKey, type Lease } from '../../host/actions/fence-lock.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { sleep } from '../helpers/wait.js';

const ROOT = resolve(import.meta.dirname, '../..');

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vesper-fence-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function leaseFile(key: string): { owner: string; token: string; expiresAt: number } {
  return JSON.parse(readFileSync(join(dir, `${fileKey(key)}.lock`), 'utf8')) as { owner: string; token: string; expiresAt: number };
}

async function acquired(lock: FenceLock, key: string, owner: string, ttlMs: number): Promise<Lease> {
  const r = await lock.tryAcquire(key, owner, ttlMs);
  if (!r.ok) throw new Error(`expected to get ${key}, held by ${r.heldBy}`);
  return r.lease;
}

describe('FenceLock in one process', () => {
  it('a held lease refuses others, naming the holder and the expiry', async () => {
    const a = new FenceLock(dir, { host: 'host-a' });
    const b = new FenceLock(dir, { host: 'host-b' });
    const lease = await acquired(a, 'vm1', 'manager-a', 60_000);
    expect(lease).toMatchObject({ key: 'vm1', owner: 'manager-a', host: 'host-a', pid: process.pid });
    const r = await b.tryAcquire('vm1', 'manager-b', 60_000);
    expect(r).toMatchObject({ ok: false, heldBy: 'manager-a', expiresAt: lease.expiresAt, holder: { host: 'host-a' } });
    // the same owner does not get it twice either: a lease is not re-entrant
    expect((await a.tryAcquire('vm1', 'manager-a', 60_000)).ok).toBe(false);
    // another key is independent
    expect((await b.tryAcquire('vm2', 'manager-b', 60_000)).ok).toBe(true);
    expect(leaseFile('vm1')).toMatchObject({ owner: 'manager-a', token: lease.token });
  });

  it('release frees it; a release by someone else does nothing', async () => {
    const a = new FenceLock(dir);
    const b = new FenceLock(dir);
    const lease = await acquired(a, 'vm1', 'manager-a', 60_000);
    // B knows everything but is not the owner, or has the owner's name but not the lease
    expect(await b.release({ ...lease, owner: 'manager-b' })).toBe(false);
    expect(await b.release({ ...lease, token: '0'.repeat(32) })).toBe(false);
    expect(leaseFile('vm1').token).toBe(lease.token);
    expect((await b.tryAcquire('vm1', 'manager-b', 60_000)).ok).toBe(false);
    expect(await a.release(lease)).toBe(true);
    expect(await a.release(lease)).toBe(false); // twice: nothing left to release
    expect((await b.tryAcquire('vm1', 'manager-b', 60_000)).ok).toBe(true);
  });

  it('an expired lease is taken over; its old holder can then neither release nor renew it', async () => {
    const a = new FenceLock(dir);
    const b = new FenceLock(dir);
    const old = await acquired(a, 'vm1', 'manager-a', 50);
    expect((await b.tryAcquire('vm1', 'manager-b', 60_000)).ok).toBe(false);
    await sleep(80);
    const taken = await acquired(b, 'vm1', 'manager-b', 60_000);
    expect(leaseFile('vm1')).toMatchObject({ owner: 'manager-b', token: taken.token });
    expect(await a.release(old)).toBe(false);
    const err = await a.renew(old).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VesperError);
    expect((err as VesperError).code).toBe(ErrorCode.FENCE_LOCKED);
    expect((err as VesperError).message).toContain('manager-b');
    expect(leaseFile('vm1').owner).toBe('manager-b');
    expect(leftovers()).toEqual([`${fileKey('vm1')}.lock`]);
  });

  it('renew extends the lease under a new token; the new lease is the one to release', async () => {
    const a = new FenceLock(dir);
    const first = await acquired(a, 'vm1', 'manager-a', 100);
    const second = await a.renew(first, 60_000);
    expect(second.token).not.toBe(first.token);
    expect(second.expiresAt).toBeGreaterThan(first.expiresAt);
    await sleep(150); // the first lease's time is over; the renewed one holds
    expect((await new FenceLock(dir).tryAcquire('vm1', 'manager-b', 1000)).ok).toBe(false);
    expect(await a.release(first)).toBe(false);
    expect(await a.release(second)).toBe(true);
    expect(leftovers()).toEqual([]);
  });

  it('a claim left by a crashed taker is passed over once it is older than the grace', async () => {
    const clock = { skew: -60_000 };
    const past = new FenceLock(dir, { now: () => Date.now() + clock.skew });
    const stale = await acquired(past, 'vm1', 'dead-manager', 1000); // expired a minute ago
    const claim0 = join(dir, `${fileKey('vm1')}.lock.${stale.token}.claim0`);
    writeFileSync(claim0, '{}\n');
    const lock = new FenceLock(dir, { claimGraceMs: 5_000 });
    // a fresh claim: someone is taking it over right now, so we do not get it
    const busy = await lock.tryAcquire('vm1', 'manager-b', 60_000);
    expect(busy).toMatchObject({ ok: false, heldBy: 'dead-manager' });
    // the same claim, but old: its taker died; the next generation is ours
    const old = (Date.now() - 10_000) / 1000;
    utimesSync(claim0, old, old);
    const r = await lock.tryAcquire('vm1', 'manager-b', 60_000);
    expect(r.ok).toBe(true);
    expect(leaseFile('vm1').owner).toBe('manager-b');
    expect(leftovers()).toEqual([`${fileKey('vm1')}.lock`]); // claims of the old lease cleaned up
  });

  it('a damaged lease file is obeyed for a grace, then replaced', async () => {
    const file = join(dir, `${fileKey('vm1')}.lock`);
    writeFileSync(file, '{"owner": "half a le');
    const lock = new FenceLock(dir, { claimGraceMs: 5_000 });
    const r1 = await lock.tryAcquire('vm1', 'manager-b', 60_000);
    expect(r1.ok).toBe(false);
    const old = (Date.now() - 10_000) / 1000;
    utimesSync(file, old, old);
    expect((await lock.tryAcquire('vm1', 'manager-b', 60_000)).ok).toBe(true);
    expect(leaseFile('vm1').owner).toBe('manager-b');
  });

  it('keys become file names inside the directory, whatever they hold', async () => {
    const lock = new FenceLock(dir);
    for (const key of ['../escape', '.hidden', 'a/b', 'ünï cødé', 'x'.repeat(300)]) {
      const lease = await acquired(lock, key, 'm', 60_000);
      expect((await lock.tryAcquire(key, 'n', 60_000)).ok).toBe(false);
      expect(await lock.release(lease)).toBe(true);
    }
    expect(fileKey('../escape')).not.toContain('/');
    expect(fileKey('.hidden').startsWith('.')).toBe(false);
    expect(fileKey('x'.repeat(300)).length).toBeLessThan(100);
    expect(leftovers()).toEqual([]);
    await expect(lock.tryAcquire('', 'm', 1000)).rejects.toMatchObject({ code: ErrorCode.USAGE });
  });

  it('fencing tokens grow with every new holder of a key, across release and takeover; renew keeps it', async () => {
    const a = new FenceLock(dir);
    const b = new FenceLock(dir);
    const first = await acquired(a, 'vm1', 'manager-a', 50);
    expect(first.fence).toBe(1);
    expect((await a.renew(first)).fence).toBe(1);
    await sleep(80);
    const taken = await acquired(b, 'vm1', 'manager-b', 60_000); // took over the expired one
    expect(taken.fence).toBe(2);
    expect(await b.release(taken)).toBe(true);
    const again = await acquired(a, 'vm1', 'manager-a', 60_000);
    expect(again.fence).toBe(3);
    expect((await acquired(a, 'vm2', 'manager-a', 60_000)).fence).toBe(1); // per key
    expect(readFileSync(join(dir, `${fileKey('vm1')}.fence`), 'utf8')).toBe('3\n');
  });

  it('many acquirers in one process: one winner per key', async () => {
    const locks = Array.from({ length: 8 }, () => new FenceLock(dir));
    for (let round = 0; round < 20; round++) {
      const rs = await Promise.all(locks.map((l, i) => l.tryAcquire(`k${round}`, `m${i}`, 60_000)));
      expect(rs.filter((r) => r.ok)).toHaveLength(1);
    }
  });
});

// The racer: a child process that answers "acquire KEY TTL" lines with one JSON line each.
const RACER = `
import { createInterface } from 'node:readline';
import { FenceLock } from ${JSON.stringify(join(ROOT, 'host/actions/fence-lock.ts'))};
const [dir, owner] = process.argv.slice(2);
const lock = new FenceLock(dir);
const rl = createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  const [, key, ttl] = line.split(' ');
  try {
    const r = await lock.tryAcquire(key, owner, Number(ttl));
    process.stdout.write(JSON.stringify({ key, ok: r.ok, heldBy: r.ok ? owner : r.heldBy }) + '\\n');
  } catch (err) {
    process.stdout.write(JSON.stringify({ key, error: String(err) }) + '\\n');
  }
});
process.stdout.write(JSON.stringify({ ready: true }) + '\\n');
`;

interface Racer {
  proc: ChildProcess;
  next(timeoutMs: number): Promise<{ key?: string; ok?: boolean; heldBy?: string; error?: string; ready?: boolean }>;
}

function startRacer(file: string, lockDir: string, owner: string): Racer {
  const proc = spawn(process.execPath, ['--import', 'tsx', file, lockDir, owner], { cwd: ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let wake: (() => void) | null = null;
  createInterface({ input: proc.stdout }).on('line', (l) => {
    lines.push(l);
    wake?.();
  });
  return {
    proc,
    async next(timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      while (!lines.length) {
        if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`racer ${owner}: no answer within ${timeoutMs} ms`);
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 50);
        });
      }
      return JSON.parse(lines.shift()!) as Awaited<ReturnType<Racer['next']>>;
    },
  };
}

describe('FenceLock between processes', () => {
  let racers: Racer[] = [];
  afterEach(() => {
    for (const r of racers) r.proc.kill('SIGKILL');
    racers = [];
  });

  it('two processes racing for the same key: exactly one wins each round, free or stale', async () => {
    const lockDir = join(dir, 'locks');
    const file = join(dir, 'racer.mts');
    writeFileSync(file, RACER);
    racers = [startRacer(file, lockDir, 'racer-a'), startRacer(file, lockDir, 'racer-b')];
    for (const r of racers) expect(await r.next(15_000)).toEqual({ ready: true });

    // Stale leases to take over: written by a "manager" whose clock says they expired long ago.
    const dead = new FenceLock(lockDir, { now: () => Date.now() - 3_600_000 });
    const ROUNDS = 40;
    for (let i = 0; i < ROUNDS; i++) expect((await dead.tryAcquire(`stale-${i}`, 'dead-manager', 1000)).ok).toBe(true);

    const winners = new Map<string, string>();
    for (let i = 0; i < ROUNDS * 2; i++) {
      const key = i % 2 === 0 ? `free-${i}` : `stale-${i >> 1}`;
      for (const r of racers) r.proc.stdin!.write(`acquire ${key} 60000\n`);
      const answers = await Promise.all(racers.map((r) => r.next(10_000)));
      for (const a of answers) {
        expect(a.error).toBeUndefined();
        expect(a.key).toBe(key);
      }
      const won = answers.filter((a) => a.ok);
      expect(won, `round ${i} (${key}): ${JSON.stringify(answers)}`).toHaveLength(1);
      // the loser names the winner
      expect(answers.find((a) => !a.ok)!.heldBy).toBe(won[0]!.heldBy);
      winners.set(key, won[0]!.heldBy!);
    }
    // What is on disk agrees with what the racers were told, and nothing else was left behind.
    for (const [key, owner] of winners) {
      expect((JSON.parse(readFileSync(join(lockDir, `${fileKey(key)}.lock`), 'utf8')) as { owner: string }).owner).toBe(owner);
    }
    expect(readdirSync(lockDir).filter((f) => !f.endsWith('.lock') && !f.endsWith('.fence'))).toEqual([]);
  });
});

/** Files left in the lock directory, the fencing-token counters (kept by design) aside. */
function leftovers(): string[] {
  return readdirSync(dir)
    .filter((f) => !f.endsWith('.fence'))
    .sort();
}
