// restart and FenceThenStart against an in-memory Hypervisor that records every call, in order,
// into one log shared by the primary and the standby; the fence lock is the real one on a temp
// directory, and a small LockSpace stands in for libvirt's lock manager (lockd): a start or a
// paused probe is refused while another domain holds one of its writable disks. What matters is
// the order: the guard checked before anything is fenced, the primary destroyed and confirmed
// 'shut off' strictly before anything is defined or started on the standby, and nothing started
// at all when the standby would not refuse a second copy, the primary cannot be confirmed stopped
// or the lock is someone else's.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FailoverError, failover, standbyXml, type FailoverOptions } from '../../host/actions/failover.js';
import { FenceLock } from '../../host/actions/fence-lock.js';
import { readFenceMark, withFenceMark } from '../../host/actions/fence-mark.js';
import { guardedDisks, probeXml } from '../../host/actions/lock-guard.js';
import { restartDomain } from '../../host/actions/restart.js';
import type { DeviceChangeOptions, DomainInfo, DomainStateName, Hypervisor } from '../../host/libvirt/hypervisor.js';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { sleep } from '../helpers/wait.js';

const XML = `<domain type='kvm'>
  <name>db1</name>
  <uuid>9037dd48-7fee-4393-ba03-fe8746808909</uuid>
  <memory unit='KiB'>65536</memory>
  <sysinfo type='smbios'>
    <system>
      <entry name='manufacturer'>vesper</entry>
      <entry name='uuid'>9037dd48-7fee-4393-ba03-fe8746808909</entry>
    </system>
  </sysinfo>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/shared/db1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/shared/tools.iso'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default'/>
    </interface>
  </devices>
</domain>
`;

interface Dom {
  state: DomainStateName;
  xml: string;
  /** a transient domain (a guard probe): gone once destroyed */
  transient?: boolean;
}

/** libvirt's lock manager in memory: writable disk path -> the domain holding it. */
class LockSpace {
  readonly held = new Map<string, string>();
  acquire(owner: string, xml: string): void {
    const disks = guardedDisks(xml).map((d) => d.source);
    const busy = disks.find((d) => this.held.has(d) && this.held.get(d) !== owner);
    if (busy)
      throw new VesperError(
        ErrorCode.DISK_LOCKED,
        `start: resource busy: Lockspace resource '${busy}' is locked (held by ${this.held.get(busy)})`,
      );
    for (const d of disks) this.held.set(d, owner);
  }
  release(owner: string): void {
    for (const [d, o] of this.held) if (o === owner) this.held.delete(d);
  }
}

/** A hypervisor in memory. Every call goes into `calls` as "<label>.<method> <args>". */
class FakeHypervisor implements Hypervisor {
  readonly domains = new Map<string, Dom>();
  /** libvirt down: every call rejects with VSP_LIBVIRT_UNAVAILABLE */
  unreachable = false;
  /** state() calls that still answer 'in shutdown' after a destroy (a slow QEMU exit) */
  shutdownReads = 0;
  /** answers state() with this instead (e.g. stuck 'running'); also after a destroy */
  stuckState: DomainStateName | null = null;
  /** delay of destroy(), ms */
  destroyDelayMs = 0;
  /** QEMU's own image locks, seen from this host: holder -> its domain XML (null: none reach here) */
  qemuImageLocks: Map<string, string> | null = null;

  constructor(
    readonly label: string,
    readonly calls: string[],
    /** null: libvirt's default "nop" lock manager */
    public lockSpace: LockSpace | null,
  ) {}

  private lockOwner(name: string): string {
    return `${this.label}/${name}`;
  }

  private note(call: string): void {
    this.calls.push(`${this.label}.${call}`);
    if (this.unreachable) throw new VesperError(ErrorCode.LIBVIRT_UNAVAILABLE, `${call}: Failed to connect socket`);
  }

  private dom(name: string): Dom {
    const d = this.domains.get(name);
    if (!d) throw new VesperError(ErrorCode.DOMAIN_NOT_FOUND, `Domain not found: ${name}`);
    return d;
  }

  async listDomains(): Promise<DomainInfo[]> {
    this.note('listDomains');
    return [...this.domains].map(([name, d]) => ({ name, uuid: '', id: null, state: d.state }));
  }
  async define(xml: string): Promise<string> {
    this.note('define');
    const name = /<name>([^<]*)<\/name>/.exec(xml)?.[1] ?? '';
    const old = this.domains.get(name);
    this.domains.set(name, { state: old?.state ?? 'shut off', xml });
    return name;
  }
  async start(name: string): Promise<void> {
    this.note(`start ${name}`);
    const d = this.dom(name);
    if (d.state === 'running') throw new VesperError(ErrorCode.LIBVIRT_CALL, 'Requested operation is not valid: domain is already running');
    this.lockSpace?.acquire(this.lockOwner(name), d.xml);
    d.state = 'running';
  }
  async createPaused(xml: string): Promise<string> {
    const name = /<name>([^<]*)<\/name>/.exec(xml)?.[1] ?? '';
    this.note(`createPaused ${name}`);
    if (this.domains.has(name)) throw new VesperError(ErrorCode.LIBVIRT_CALL, `operation failed: domain '${name}' already exists`);
    if (this.qemuImageLocks) {
      const busy = guardedDisks(xml).find((d) => [...this.qemuImageLocks!.values()].some((x) => x.includes(d.source)));
      if (busy)
        throw new VesperError(
          ErrorCode.DISK_LOCKED,
          `start: Failed to get "write" lock; Is another process using the image [${busy.source}]?`,
        );
    }
    this.domains.set(name, { state: 'paused', xml, transient: true });
    return name;
  }
  async resume(name: string): Promise<void> {
    this.note(`resume ${name}`);
    const d = this.dom(name);
    this.lockSpace?.acquire(this.lockOwner(name), d.xml); // libvirt takes the locks when the CPUs start
    d.state = 'running';
  }
  async destroy(name: string): Promise<void> {
    this.note(`destroy ${name}`);
    if (this.destroyDelayMs) await sleep(this.destroyDelayMs);
    const d = this.dom(name);
    if (d.state === 'shut off') throw new VesperError(ErrorCode.LIBVIRT_CALL, 'Requested operation is not valid: domain is not running');
    this.lockSpace?.release(this.lockOwner(name));
    if (d.transient) this.domains.delete(name);
    else d.state = this.shutdownReads > 0 ? 'in shutdown' : 'shut off';
  }
  async shutdown(name: string): Promise<void> {
    this.note(`shutdown ${name}`);
  }
  async undefine(name: string): Promise<void> {
    this.note(`undefine ${name}`);
    this.domains.delete(name);
  }
  async reboot(name: string): Promise<void> {
    this.note(`reboot ${name}`);
  }
  async state(name: string): Promise<{ state: string; reason: string }> {
    this.note(`state ${name}`);
    const d = this.dom(name);
    if (this.stuckState) return { state: this.stuckState, reason: 'unknown' };
    if (d.state === 'in shutdown' && --this.shutdownReads <= 0) d.state = 'shut off';
    const state = d.state;
    this.calls[this.calls.length - 1] += ` -> ${state}`;
    return { state, reason: state === 'shut off' ? 'destroyed' : 'booted' };
  }
  async xml(name: string): Promise<string> {
    this.note(`xml ${name}`);
    return this.dom(name).xml;
  }
  async attachDevice(name: string, _xml: string, _o: DeviceChangeOptions): Promise<void> {
    this.note(`attachDevice ${name}`);
  }
  async detachDevice(name: string, _xml: string, _o: DeviceChangeOptions): Promise<void> {
    this.note(`detachDevice ${name}`);
  }
  async close(): Promise<void> {}
}

let dir: string;
let calls: string[];
let lockSpace: LockSpace;
let primary: FakeHypervisor;
let standby: FakeHypervisor;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vesper-failover-'));
  calls = [];
  lockSpace = new LockSpace(); // one lockspace both hosts share: the setup failover requires
  primary = new FakeHypervisor('primary', calls, lockSpace);
  standby = new FakeHypervisor('standby', calls, lockSpace);
  primary.domains.set('db1', { state: 'running', xml: XML });
  lockSpace.acquire('primary/db1', XML);
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function opts(over: Partial<FailoverOptions> = {}): FailoverOptions {
  return { vm: 'db1', primary, standby, lock: new FenceLock(dir), owner: 'manager-a', confirmTimeoutMs: 2000, pollMs: 10, ...over };
}

/** Index of the first call starting with `prefix`; fails the test when there is none. */
function at(prefix: string): number {
  const i = calls.findIndex((c) => c.startsWith(prefix));
  expect(i, `${prefix} in ${JSON.stringify(calls)}`).toBeGreaterThanOrEqual(0);
  return i;
}

/** What the failover did on the standby, the guard's probes and its reads of a fencing mark left out. */
const standbyCalls = (): string[] =>
  calls.filter((c) => c.startsWith('standby.') && !c.includes('vesper-guard-') && !c.startsWith('standby.xml '));
/** Lease files (the fencing-token counters K.fence stay, by design). */
const leaseFiles = (): string[] =>
  readdirSync(dir)
    .filter((f) => !f.endsWith('.fence'))
    .sort();
/** Domains that run (or are paused) on either host, probes included. */
const live = (): string[] =>
  [primary, standby].flatMap((h) => [...h.domains].filter(([, d]) => d.state !== 'shut off').map(([n]) => `${h.label}/${n}`)).sort();

async function failed(p: Promise<unknown>): Promise<FailoverError> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(FailoverError);
  return err as FailoverError;
}

describe('restartDomain', () => {
  it('destroys, then starts', async () => {
    const r = await restartDomain(primary, 'db1');
    expect(r).toMatchObject({ vm: 'db1', destroyed: true, started: true });
    expect(calls).toEqual(['primary.destroy db1', 'primary.start db1']);
    expect(primary.domains.get('db1')!.state).toBe('running');
  });

  it('a domain that is already shut off is just started', async () => {
    primary.domains.get('db1')!.state = 'shut off';
    const r = await restartDomain(primary, 'db1');
    expect(r).toMatchObject({ destroyed: false, stateBefore: 'shut off' });
    expect(calls).toEqual(['primary.destroy db1', 'primary.state db1 -> shut off', 'primary.start db1']);
  });

  it('an unreachable libvirt or a missing domain is an error, and nothing is started', async () => {
    primary.unreachable = true;
    await expect(restartDomain(primary, 'db1')).rejects.toMatchObject({ code: ErrorCode.LIBVIRT_UNAVAILABLE });
    primary.unreachable = false;
    await expect(restartDomain(primary, 'nope')).rejects.toMatchObject({ code: ErrorCode.DOMAIN_NOT_FOUND });
    expect(calls.some((c) => c.includes('start'))).toBe(false);
  });
});

describe('failover (FenceThenStart)', () => {
  it('fences and confirms on the primary strictly before defining and starting on the standby', async () => {
    primary.shutdownReads = 3; // QEMU takes a few polls to go away
    const r = await failover(opts({ standbyName: 'db1-b' }));
    expect(r.steps.map((s) => s.step)).toEqual(['locked', 'guarded', 'fenced', 'confirmed', 'defined', 'started']);
    for (let i = 1; i < r.steps.length; i++) expect(r.steps[i]!.atMs).toBeGreaterThanOrEqual(r.steps[i - 1]!.atMs);
    expect(r).toMatchObject({ vm: 'db1', standbyName: 'db1-b', destroyed: true });

    const destroy = at('primary.destroy db1');
    const confirmed = at('primary.state db1 -> shut off');
    const define = at('standby.define');
    const start = at('standby.start db1-b');
    expect(destroy).toBeLessThan(confirmed);
    expect(confirmed).toBeLessThan(define);
    expect(define).toBeLessThan(start);
    // every state read before the confirmation said it was not yet shut off
    expect(calls.slice(destroy + 1, confirmed).every((c) => c.startsWith('primary.state db1 -> in shutdown'))).toBe(true);
    // before the confirmation the standby saw only the guard's probe (refused), nothing else
    expect(calls.slice(0, confirmed).filter((c) => c.startsWith('standby.'))).toEqual([
      expect.stringMatching(/^standby\.createPaused vesper-guard-/),
      expect.stringMatching(/^standby\.resume vesper-guard-/), // refused: the lockspace holds the disk
      expect.stringMatching(/^standby\.destroy vesper-guard-/),
      'standby.xml db1-b', // is there a definition marked by a newer failover?
    ]);

    const copy = standby.domains.get('db1-b')!;
    expect(copy.state).toBe('running');
    expect(copy.xml).toContain('<name>db1-b</name>');
    expect(copy.xml).not.toContain('<uuid>');
    expect(copy.xml).not.toContain("<entry name='uuid'>");
    expect(copy.xml).not.toContain('<mac ');
    expect(primary.domains.get('db1')!.state).toBe('shut off');
    expect(leaseFiles()).toEqual([]); // both leases released
  });

  it('the same name on the standby keeps the identity (UUID, MAC)', async () => {
    await failover(opts());
    const copy = standby.domains.get('db1')!;
    expect(copy.xml).toContain('<uuid>9037dd48-7fee-4393-ba03-fe8746808909</uuid>');
    expect(copy.xml).toContain("<mac address='52:54:00:12:34:56'/>");
    expect(at('primary.state db1 -> shut off')).toBeLessThan(at('standby.start db1'));
  });

  it('a primary already shut off counts as fenced once libvirt confirms it', async () => {
    primary.domains.get('db1')!.state = 'shut off';
    lockSpace.release('primary/db1');
    const r = await failover(opts());
    expect(r.destroyed).toBe(false);
    expect(standby.domains.get('db1')!.state).toBe('running');
  });

  it('an unreachable primary libvirt is not confirmation: VSP_PRIMARY_UNREACHABLE, nothing started', async () => {
    primary.unreachable = true;
    const err = await failed(failover(opts()));
    expect(err.code).toBe(ErrorCode.PRIMARY_UNREACHABLE);
    expect(err.message).toMatch(/cannot be reached/);
    expect(err.message).toMatch(/Pacemaker/);
    expect(err.steps.map((s) => s.step)).toEqual(['locked']);
    expect(standbyCalls()).toEqual([]);
    expect(leaseFiles()).toEqual([]); // the lock is released for whoever tries next
  });

  it('libvirt going away after the destroy: never confirmed, nothing started', async () => {
    // the destroy goes through (QEMU still exiting), then libvirt is cut off
    primary.shutdownReads = 1000;
    const destroy = primary.destroy.bind(primary);
    primary.destroy = async (name) => {
      await destroy(name);
      primary.unreachable = true;
    };
    const err = await failed(failover(opts({ confirmTimeoutMs: 300 })));
    expect(err.code).toBe(ErrorCode.FENCE_FAILED);
    expect(err.message).toMatch(/did not confirm 'shut off'/);
    expect(standbyCalls()).toEqual([]);
  });

  it('a domain that never reports shut off: VSP_FENCE_FAILED at the confirm timeout, nothing started', async () => {
    primary.stuckState = 'running';
    const t0 = Date.now();
    const err = await failed(failover(opts({ confirmTimeoutMs: 250 })));
    expect(Date.now() - t0).toBeGreaterThanOrEqual(240);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(err.code).toBe(ErrorCode.FENCE_FAILED);
    expect(err.message).toContain('state running');
    expect(err.steps.map((s) => s.step)).toEqual(['locked', 'guarded', 'fenced']);
    expect(standbyCalls()).toEqual([]);
  });

  it('an injected waitStopped confirms (then one state read); its failure stops the failover', async () => {
    const waited: string[] = [];
    await failover(
      opts({
        waitStopped: async (vm) => {
          waited.push(vm);
          calls.push('hook.stopped');
        },
      }),
    );
    expect(waited).toEqual(['db1']);
    expect(at('primary.destroy')).toBeLessThan(at('hook.stopped'));
    expect(at('hook.stopped')).toBeLessThan(at('primary.state db1 -> shut off'));
    expect(at('primary.state db1 -> shut off')).toBeLessThan(at('standby.start'));

    calls.length = 0;
    primary.domains.get('db1')!.state = 'running';
    standby.domains.clear();
    lockSpace.release('standby/db1');
    lockSpace.acquire('primary/db1', XML);
    const err = await failed(failover(opts({ waitStopped: () => Promise.reject(new Error('no Stopped event')) })));
    expect(err.code).toBe(ErrorCode.FENCE_FAILED);
    expect(err.message).toContain('no Stopped event');
    expect(standbyCalls()).toEqual([]);

    // a hook that never answers is bounded by the confirm timeout
    const err2 = await failed(failover(opts({ confirmTimeoutMs: 200, waitStopped: () => new Promise(() => undefined) })));
    expect(err2.code).toBe(ErrorCode.FENCE_FAILED);
    expect(standbyCalls()).toEqual([]);
  });

  it('a lock held by another manager refuses, naming it, before anything is touched', async () => {
    const other = new FenceLock(dir, { host: 'host-b' });
    const held = await other.tryAcquire('db1', 'manager-b', 60_000);
    expect(held.ok).toBe(true);
    const err = await failed(failover(opts()));
    expect(err.code).toBe(ErrorCode.FENCE_LOCKED);
    expect(err.message).toContain('manager-b');
    expect(err.message).toContain('host-b');
    expect(calls).toEqual([]);
  });

  it('the name it will run under on the standby is locked too (no fencing of the instance being brought up)', async () => {
    await new FenceLock(dir).tryAcquire('db1-b', 'manager-b', 60_000);
    const err = await failed(failover(opts({ standbyName: 'db1-b' })));
    expect(err.code).toBe(ErrorCode.FENCE_LOCKED);
    expect(calls).toEqual([]);
    expect(leaseFiles()).toEqual(['db1-b.lock']); // ours (db1) given back
  });

  it('two managers failing over the same VM at once: exactly one proceeds', async () => {
    primary.destroyDelayMs = 50; // keep the first one inside its lock while the second arrives
    const results = await Promise.allSettled([
      failover(opts({ owner: 'manager-a', lock: new FenceLock(dir, { host: 'a' }) })),
      failover(opts({ owner: 'manager-b', lock: new FenceLock(dir, { host: 'b' }) })),
    ]);
    const ok = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(ok).toHaveLength(1);
    expect(refused).toHaveLength(1);
    expect((refused[0]!.reason as VesperError).code).toBe(ErrorCode.FENCE_LOCKED);
    expect(calls.filter((c) => c.startsWith('primary.destroy'))).toHaveLength(1);
    expect(calls.filter((c) => c.startsWith('standby.start'))).toHaveLength(1);
  });

  it('a lease lost during the failover (expired, taken over) stops it before anything starts', async () => {
    const err = await failed(
      failover(
        opts({
          leaseTtlMs: 50,
          // the confirmation takes longer than the lease; meanwhile another manager takes it over
          waitStopped: async () => {
            await sleep(80);
            const r = await new FenceLock(dir).tryAcquire('db1', 'manager-b', 60_000);
            expect(r.ok).toBe(true);
          },
        }),
      ),
    );
    expect(err.code).toBe(ErrorCode.FENCE_LOCKED);
    expect(err.steps.map((s) => s.step)).toEqual(['locked', 'guarded', 'fenced', 'confirmed']);
    expect(standbyCalls()).toEqual([]);
  });

  it('no VM, or a bad standby name: refused before the lock', async () => {
    expect((await failed(failover(opts({ vm: '' })))).code).toBe(ErrorCode.USAGE);
    expect((await failed(failover(opts({ standbyName: 'a/b' })))).code).toBe(ErrorCode.USAGE);
    expect(calls).toEqual([]);
    expect(leaseFiles()).toEqual([]);
  });

  it('a standby that refuses the definition: ACTION_FAILED after the fence, nothing started', async () => {
    standby.define = async () => {
      calls.push('standby.define');
      throw new VesperError(ErrorCode.LIBVIRT_CALL, "operation failed: domain 'db1' already exists with uuid 1234");
    };
    const err = await failed(failover(opts()));
    expect(err.code).toBe(ErrorCode.ACTION_FAILED);
    expect(err.steps.map((s) => s.step)).toEqual(['locked', 'guarded', 'fenced', 'confirmed']);
    expect(calls.some((c) => c.startsWith('standby.start'))).toBe(false);
  });
});

describe('failover guarded by the lock manager', () => {
  it("the guard is seen before the fence: the standby refused a paused probe on the running copy's disks", async () => {
    const r = await failover(opts());
    expect(r.guard).toMatchObject({ holder: 'vm', disks: ['/shared/db1.qcow2'] });
    expect(r.guard!.refusal).toMatch(/Lockspace resource .* is locked/);
    const probe = at('standby.createPaused vesper-guard-');
    expect(probe).toBeLessThan(at('primary.destroy db1'));
    expect(live()).toEqual(['standby/db1']); // one copy, no probe left
  });

  it('a standby without a lock manager: VSP_FAILOVER_UNGUARDED, nothing fenced, the probe destroyed', async () => {
    standby.lockSpace = null; // libvirt's default "nop"
    const err = await failed(failover(opts()));
    expect(err.code).toBe(ErrorCode.FAILOVER_UNGUARDED);
    expect(err.message).toContain('lock_manager = "lockd"');
    expect(err.message).toContain('started a second QEMU on /shared/db1.qcow2');
    expect(err.steps.map((s) => s.step)).toEqual(['locked']);
    expect(calls.some((c) => c.startsWith('primary.destroy'))).toBe(false);
    expect(standbyCalls()).toEqual([]);
    expect(live()).toEqual(['primary/db1']);
    expect(leaseFiles()).toEqual([]);
  });

  it('a lock manager whose lockspace the primary does not share is no guard either', async () => {
    standby.lockSpace = new LockSpace(); // lockd on, file_lockspace_dir on local disk
    const err = await failed(failover(opts()));
    expect(err.code).toBe(ErrorCode.FAILOVER_UNGUARDED);
    expect(err.message).toContain('lockspace is not the one the primary uses');
    expect(live()).toEqual(['primary/db1']);
  });

  it("a refusal by QEMU's own image lock on the standby counts too (it comes before the lock manager's), and says so", async () => {
    standby.lockSpace = null;
    standby.qemuImageLocks = new Map([['primary/db1', XML]]);
    const r = await failover(opts());
    expect(r.guard).toMatchObject({ by: 'qemu-image-lock', holder: 'vm' });
    expect(r.guard!.refusal).toContain('Failed to get "write" lock');
  });

  it('a probe whose CPUs start is destroyed at once; it never boots the disk (an empty CD-ROM is its only boot device)', async () => {
    standby.lockSpace = null;
    await failed(failover(opts()));
    const probe = calls.find((c) => c.startsWith('standby.createPaused'))!.split(' ')[1]!;
    expect(calls.filter((c) => c.includes(probe))).toEqual([
      `standby.createPaused ${probe}`,
      `standby.resume ${probe}`,
      `standby.destroy ${probe}`,
    ]);
    const xml = probeXml('p', XML, guardedDisks(XML));
    expect(xml).toMatch(/<disk type='file' device='cdrom'><target dev='hdc' bus='ide'\/><readonly\/><boot order='1'\/><\/disk>/);
    expect(xml.match(/<boot /g)).toHaveLength(1);
    expect(xml).toContain("<source file='/shared/db1.qcow2'/>");
    expect(xml).toContain("<driver name='qemu' type='qcow2'/>");
    expect(xml).not.toContain('tools.iso'); // read-only disks are not locked, not probed
  });

  it('a VM shut off on the primary: a paused probe holds its disks there while the standby is asked', async () => {
    primary.domains.get('db1')!.state = 'shut off';
    lockSpace.release('primary/db1');
    const r = await failover(opts());
    expect(r.guard).toMatchObject({ holder: 'probe' });
    expect(at('primary.createPaused vesper-guard-')).toBeLessThan(at('standby.createPaused vesper-guard-'));
    expect(live()).toEqual(['standby/db1']);
  });

  it('shut off here but its disks held by a copy elsewhere: VSP_DISK_LOCKED, nothing fenced or started', async () => {
    primary.domains.get('db1')!.state = 'shut off';
    lockSpace.release('primary/db1');
    lockSpace.acquire('host-c/db1', XML); // someone else already runs it
    const err = await failed(failover(opts()));
    expect(err.code).toBe(ErrorCode.DISK_LOCKED);
    expect(err.message).toMatch(/another QEMU holds its disks/);
    expect(standbyCalls()).toEqual([]);
    expect(live()).toEqual([]);
  });

  it('a diskless or paused VM cannot be checked: VSP_FAILOVER_UNGUARDED, saying why', async () => {
    primary.domains.set('nodisk', { state: 'running', xml: XML.replace(/<disk[\s\S]*?<\/disk>\s*/g, '').replace('db1', 'nodisk') });
    const e1 = await failed(failover(opts({ vm: 'nodisk' })));
    expect(e1.code).toBe(ErrorCode.FAILOVER_UNGUARDED);
    expect(e1.message).toContain('no writable file or block disk');
    primary.domains.get('db1')!.state = 'paused';
    const e2 = await failed(failover(opts()));
    expect(e2.code).toBe(ErrorCode.FAILOVER_UNGUARDED);
    expect(e2.message).toContain('paused');
    expect(calls.some((c) => c.includes('destroy'))).toBe(false);
  });

  it('requireLockManager false skips the guard (one libvirtd, no shared disk)', async () => {
    standby.lockSpace = null;
    const r = await failover(opts({ requireLockManager: false }));
    expect(r.guard).toBeNull();
    expect(r.steps.map((s) => s.step)).toEqual(['locked', 'fenced', 'confirmed', 'defined', 'started']);
    expect(calls.some((c) => c.includes('vesper-guard-'))).toBe(false);
  });

  it("a second copy started meanwhile (lease or not): the standby's start is refused as VSP_DISK_LOCKED", async () => {
    // between our confirmation and our start, something starts the VM on the primary again
    const define = standby.define.bind(standby);
    standby.define = async (xml) => {
      const name = await define(xml);
      await primary.start('db1');
      return name;
    };
    const err = await failed(failover(opts()));
    expect(err.code).toBe(ErrorCode.DISK_LOCKED);
    expect(err.message).toMatch(/refused to start db1: another QEMU holds its disks/);
    expect(err.message).toMatch(/Lockspace resource '\/shared\/db1.qcow2' is locked/);
    expect(err.steps.map((s) => s.step)).toEqual(['locked', 'guarded', 'fenced', 'confirmed', 'defined']);
    expect(live()).toEqual(['primary/db1']); // one copy
  });
});

describe('the fencing token', () => {
  it('grows with every failover of the key and marks the standby definition', async () => {
    const first = await failover(opts());
    expect(first.fence).toBe(1);
    expect(readFenceMark(standby.domains.get('db1')!.xml)).toEqual({ fence: 1, owner: 'manager-a' });
    // back again, by another manager
    const back = await failover(opts({ primary: standby, standby: primary, owner: 'manager-b' }));
    expect(back.fence).toBe(2);
    expect(readFenceMark(primary.domains.get('db1')!.xml)).toEqual({ fence: 2, owner: 'manager-b' });
    expect(readdirSync(dir)).toEqual([`db1.fence`]);
  });

  it('a standby definition marked by a newer failover stops a stale manager before it starts', async () => {
    standby.domains.set('db1', { state: 'shut off', xml: withFenceMark(XML, { fence: 9, owner: 'manager-z' }) });
    const err = await failed(failover(opts()));
    expect(err.code).toBe(ErrorCode.FENCE_LOCKED);
    expect(err.message).toContain('fence 9 by manager-z');
    expect(err.steps.map((s) => s.step)).toEqual(['locked', 'guarded']);
    expect(calls.some((c) => c.startsWith('primary.destroy') || c.startsWith('standby.define') || c.startsWith('standby.start'))).toBe(
      false,
    );
  });

  it('withFenceMark replaces an older mark and keeps other metadata', () => {
    const other = XML.replace('</name>', "</name>\n  <metadata>\n    <app:x xmlns:app='urn:app'/>\n  </metadata>");
    const once = withFenceMark(other, { fence: 3, owner: 'a' });
    const twice = withFenceMark(once, { fence: 4, owner: 'b <&>' });
    expect(twice.match(/:failover /g)).toHaveLength(1);
    expect(readFenceMark(twice)).toEqual({ fence: 4, owner: 'b <&>' });
    expect(twice).toContain("<app:x xmlns:app='urn:app'/>");
    expect(readFenceMark(XML)).toBeNull();
  });
});

describe('standbyXml', () => {
  it('keeps the definition for the same name, dropping only what is live-only', () => {
    const live = XML.replace("<domain type='kvm'>", "<domain type='kvm' id='7'>");
    expect(standbyXml(live)).toBe(XML);
  });

  it('renames (escaped), and drops UUIDs and MACs so libvirt makes new ones', () => {
    const out = standbyXml(XML, 'db1 <copy> & co');
    expect(out).toContain('<name>db1 &lt;copy&gt; &amp; co</name>');
    expect(out).not.toMatch(/uuid/);
    expect(out).not.toContain('52:54:00');
    expect(out).toContain("<entry name='manufacturer'>vesper</entry>");
    expect(out).toContain("<source network='default'/>");
    expect(
      out
        .trimEnd()
        .split('\n')
        .some((l) => l.trim() === ''),
    ).toBe(false); // no blank lines left behind
  });
});
