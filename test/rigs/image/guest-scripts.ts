// What the guest image's shell scripts (guest/init.sh, guest/vesper-fault.sh: busybox ash, no
// udev, no init system) need to know, and where the image puts things. The scripts read these
// values from /etc/vesper-guest.conf, which guestConf() writes, so each is stated once, here.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export const AGENT_PORT = 'org.vesper.agent.0';
export const TEST_PORT = 'org.vesper.test.0';
export const DEMO_SERVICE = '/usr/sbin/vesper-demo-svc';
export const EXIT_PROGRAM = '/usr/sbin/vesper-exit';
export const SEGV_PROGRAM = '/usr/sbin/vesper-segv';
export const FAULT_HELPER = '/usr/sbin/vesper-fault';
export const AGENT_PATH = '/opt/vesper/vesper-agent.mjs';
export const HOST_KEY_PATH = '/etc/vesper/host.pub';
/** where an agent started without a key pins the host's (the package's --state-dir) */
export const AGENT_STATE_DIR = '/var/lib/vesper-agent';

export interface GuestConfOptions {
  /** Modules in load order (dependencies first), as paths inside the image. */
  modules: { name: string; path: string }[];
  /** whether init starts the fault injector (images built with test helpers) */
  testHelpers: boolean;
}

export const GUEST_CONF_PATH = '/etc/vesper-guest.conf';

/** The shell variables init.sh and vesper-fault.sh source from GUEST_CONF_PATH. */
export function guestConf(o: GuestConfOptions): string {
  const vars: Record<string, string> = {
    AGENT_PORT,
    TEST_PORT,
    AGENT_PATH,
    HOST_KEY_PATH,
    AGENT_STATE_DIR,
    DEMO_SERVICE,
    EXIT_PROGRAM,
    SEGV_PROGRAM,
    FAULT_HELPER,
    TEST_HELPERS: o.testHelpers ? '1' : '0',
    MODULES: o.modules.map((m) => `${m.name}=${m.path}`).join(' '),
  };
  return Object.entries(vars)
    .map(([k, v]) => `${k}='${v.replace(/'/g, `'\\''`)}'\n`)
    .join('');
}

const script = (name: string): string => readFileSync(join(import.meta.dirname, 'guest', name), 'utf8');

/** The guest's /init (guest/init.sh). */
export const initScript = (): string => script('init.sh');

/** The TEST-ONLY fault injector (guest/vesper-fault.sh, which documents its protocol). */
export const faultHelperScript = (): string => script('vesper-fault.sh');

export const INDEX_HTML = '<!doctype html>\n<title>vesper-guest</title>\n<p>vesper demo guest</p>\n';
