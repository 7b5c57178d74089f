// Which host key this agent trusts, and how it came to trust it (docs/trust.md):
// - given: --host-key names the key (what `vesper agent install` pushes over SSH); never changes;
// - pinned: the key in the state directory's host.pub. When there is none, the agent enrols on
//   its first contact over the virtio-serial port (which only the hypervisor can reach): it pins
//   the key the host's answer offers, once the host has signed this hello's nonce with it.
// From then on modules signed by any other key are refused (verify.ts), and so is a host whose
// answer offers another key (VSP_HOST_KEY_MISMATCH), until root in the guest re-enrols
// (`vesper-agent enrol --reset`). The pin is re-read at every hello, so a reset takes effect
// with the next link, without restarting the agent.
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { pb } from '../../proto/codec.js';
import { checkOfferedKey, ENROL_NONCE_BYTES } from '../../proto/enrol.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { Logger } from '../log.js';
import { TrustedKeys } from './verify.js';

/** Where the agent keeps its state when installed (the vesper-agent package makes it, 0700). */
export const DEFAULT_STATE_DIR = '/var/lib/vesper-agent';
/** The pinned host key, a PEM public key: also how root pre-seeds it by hand. */
export const PIN_FILE = 'host.pub';

export interface HelloTrust {
  trustedKeyIds: string[];
  enrols: boolean;
  enrolNonce: Buffer;
}

/** What an answered hello means for this link: go on, or refuse the host with this error. */
export type AckVerdict = { ok: true; enrolled?: string } | { ok: false; error: VesperError } | { ok: 'stale' };

/**
 * How many earlier hellos' nonces are remembered. On a virtio-serial port a hello written while
 * no host held the port waits there and reaches the next host first, and that host answers it:
 * an answer that proves the key over one of these is for a link that is gone, not a bad proof.
 */
const EARLIER_NONCES = 4;

/** How long the same refusal is not logged again (a refused host relinks every few seconds). */
const REFUSAL_LOG_MS = 60_000;

export class HostTrust {
  private keys: TrustedKeys | null;
  private pinError: VesperError | null = null;
  private readonly refusalsLogged = new Map<string, number>();
  /** the nonces of the last hellos sent, newest last */
  private readonly nonces: Buffer[] = [];

  private constructor(
    /** the --host-key path, or null when the key is pinned in the state directory */
    readonly given: string | null,
    readonly stateDir: string | null,
    /** a link of this agent may enrol it (its transport is the virtio-serial port) */
    private readonly canEnrol: boolean,
    private readonly log: Logger | null,
    keys: TrustedKeys | null,
  ) {
    this.keys = keys;
  }

  /** --host-key: these keys and no others, no enrolment. */
  static given(path: string, log: Logger | null = null): HostTrust {
    return new HostTrust(path, null, false, log, TrustedKeys.load(path));
  }

  /** For tests and embedders: a key set already loaded. */
  static ofKeys(keys: TrustedKeys, log: Logger | null = null): HostTrust {
    return new HostTrust('(given)', null, false, log, keys);
  }

  /**
   * The key pinned in stateDir. Without one, `canEnrol` (virtio transport) lets the first host
   * enrol the agent; otherwise the agent has nothing to trust and refuses to start.
   */
  static pinned(stateDir: string, canEnrol: boolean, log: Logger | null = null): HostTrust {
    const t = new HostTrust(null, stateDir, canEnrol, log, null);
    t.refresh();
    if (!t.keys && !t.pinError && !canEnrol)
      throw new VesperError(
        ErrorCode.KEY_MISSING,
        `no host key: none given (--host-key) and none pinned in ${t.pinPath}; an agent enrols only on the virtio-serial port (--transport virtio:...), never over SSH or a socket, where \`vesper agent install\` gives it the key`,
      );
    return t;
  }

  get pinPath(): string {
    return join(this.stateDir ?? '', PIN_FILE);
  }

  /** The key ids trusted now ([] while not enrolled). */
  ids(): string[] {
    return this.keys?.ids() ?? [];
  }

  /** Re-reads the pin (pinned mode): a reset or a key root put there by hand counts from now. */
  refresh(): void {
    if (this.given !== null) return;
    this.pinError = null;
    let pem: string;
    try {
      pem = readFileSync(this.pinPath, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
        this.pinError = new VesperError(
          ErrorCode.KEY_INVALID,
          `cannot read the pinned host key ${this.pinPath}: ${(err as Error).message}`,
        );
      this.keys = null;
      return;
    }
    const k = new TrustedKeys();
    try {
      k.add(pem, this.pinPath);
      this.keys = k;
    } catch (err) {
      // A damaged pin is not "not enrolled": the agent must not enrol whichever host comes next.
      this.keys = null;
      this.pinError = new VesperError(
        ErrorCode.KEY_INVALID,
        `${(err as Error).message}; nothing is trusted until root re-enrols (vesper-agent enrol --reset)`,
      );
    }
  }

  /** The hello's enrolment fields (a new nonce every time). */
  helloFields(): HelloTrust {
    this.refresh();
    const enrolNonce = randomBytes(ENROL_NONCE_BYTES);
    this.nonces.push(enrolNonce);
    if (this.nonces.length > EARLIER_NONCES + 1) this.nonces.shift();
    return { trustedKeyIds: this.ids(), enrols: this.enrolsNow(), enrolNonce };
  }

  private enrolsNow(): boolean {
    return this.given === null && this.canEnrol && this.keys === null && this.pinError === null;
  }

  /** The host's answer to our hello (which carried `nonce`): trusted, enrolled now, or refused. */
  onHelloAck(ack: pb.IHelloAck, nonce: Uint8Array): AckVerdict {
    this.refresh();
    if (this.pinError) return this.refuse(this.pinError, 'pin');
    const offered = ack.hostKey?.length ? ack.hostKey : null;
    if (!offered) {
      // A host that offers no key (an older vesperd, a test client): modules still need a key
      // this agent trusts, so an agent not enrolled loads none.
      if (!this.keys) this.log?.warn({ code: ErrorCode.KEY_MISSING }, 'the host offered no key to enrol with: no module can load');
      return { ok: true };
    }
    const proof = ack.hostKeyProof ?? new Uint8Array();
    const c = checkOfferedKey(offered, proof, nonce);
    if ('why' in c) {
      const earlier = this.nonces.some((n) => !n.equals(nonce) && !('why' in checkOfferedKey(offered, proof, n)));
      if (earlier) return { ok: 'stale' };
      return this.refuse(new VesperError(ErrorCode.KEY_INVALID, c.why), 'proof');
    }
    if (this.keys) {
      if (this.keys.ids().includes(c.id)) return { ok: true };
      const how =
        this.given !== null
          ? `given with --host-key ${this.given}; install the agent again with the new key (vesper agent install)`
          : `pinned in ${this.pinPath}${pinnedSince(this.pinPath)}; root in the guest re-enrols with: vesper-agent enrol --reset`;
      return this.refuse(
        new VesperError(
          ErrorCode.HOST_KEY_MISMATCH,
          `host key ${c.id} is not the one this agent trusts (${this.ids().join(', ')}, ${how}): host refused`,
        ),
        c.id,
      );
    }
    if (!this.enrolsNow())
      return this.refuse(new VesperError(ErrorCode.KEY_MISSING, 'this agent has no host key and may not enrol on this link'), 'none');
    this.pin(c.pem);
    this.keys = new TrustedKeys();
    this.keys.add(c.pem, this.pinPath);
    this.log?.info({ keyId: c.id, pin: this.pinPath }, 'enrolled: host key pinned on first contact over the virtio-serial port');
    return { ok: true, enrolled: c.id };
  }

  private refuse(error: VesperError, what: string): AckVerdict {
    const key = `${error.code}:${what}`;
    const last = this.refusalsLogged.get(key) ?? 0;
    if (Date.now() - last >= REFUSAL_LOG_MS) {
      this.refusalsLogged.set(key, Date.now());
      this.log?.error({ code: error.code }, error.message);
    }
    return { ok: false, error };
  }

  /** Written whole or not at all (a temporary file renamed over it). */
  private pin(pem: string): void {
    const dir = this.stateDir!;
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const tmp = `${this.pinPath}.${process.pid}.tmp`;
    writeFileSync(tmp, pem, { mode: 0o644 });
    renameSync(tmp, this.pinPath);
  }

  /** Checks a module's digest and signature against the key(s) trusted now. */
  verifyModule(m: pb.IProbeModule): Buffer {
    if (this.pinError) throw this.pinError;
    if (!this.keys)
      throw new VesperError(
        ErrorCode.KEY_MISSING,
        `this agent is not enrolled yet (no host key pinned in ${this.pinPath}): it runs no module until a host enrols it over the virtio-serial port`,
      );
    return this.keys.verifyModule(m);
  }
}

function pinnedSince(path: string): string {
  try {
    return ` since ${statSync(path).mtime.toISOString()}`;
  } catch {
    return '';
  }
}

/** `vesper-agent enrol --reset`: forgets the pinned key; the next host over the virtio-serial port is pinned. */
export function resetPin(stateDir: string): { removed: boolean; path: string } {
  const path = join(stateDir, PIN_FILE);
  let removed = true;
  try {
    statSync(path);
  } catch {
    removed = false;
  }
  rmSync(path, { force: true });
  return { removed, path };
}
