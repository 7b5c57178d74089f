// FenceLock: a lease per key (a VM name) in a directory that several managers share, so that
// two managers that both suspect the same VM do not both fence it and start it elsewhere. Since
// issue 21 it is a coordination marker, not the guarantee: a lease on files and wall clocks fails
// exactly when the storage or the clocks do (a lost NFS mount, a paused holder), so failover also
// needs libvirt's lock manager, which refuses a second QEMU on the same disks whatever the
// leases say (lock-guard.ts, docs/failures.md#failover). Each lease carries a fencing token: a number per
// key that every new holder takes one higher than the last (K.fence), so what a holder did can be
// told apart from what an older one did. It is
// the software form of the Toshiba scheme in seed 002: before shooting the other node, a node
// blocks shots at itself, and the two blocks exclude each other, so of two nodes that suspect
// each other one always survives. Here the block is the lease: whoever holds it for a VM may
// fence and restart it; whoever finds it held backs off with VSP_FENCE_LOCKED.
//
// Files in the directory, for a key K (K file-name-encoded):
//   K.lock                     the lease: JSON {key, owner, pid, host, expiresAt, ttlMs, token}
//   K.lock.<token>.tmp         a lease being written (renamed or linked into place, then gone)
//   K.lock.<token>.claim<n>    the right to remove or replace the lease whose token is <token>
//   K.fence                    the last fencing token given out for K (a decimal number; kept
//                              after release, so tokens only grow)
//
// Every lease file is written completely under a unique temporary name first and only then put
// in place, so a reader never sees half a lease. Its content never changes: renew puts a new
// lease (a new token) in its place. So a token names exactly one lease, and tokens (128 random
// bits) are never reused.
//
// Acquiring a free key: link(tmp, K.lock). link() fails with EEXIST when the name exists, in one
// step, on local file systems and on NFS alike (it is what O_CREAT|O_EXCL is on a local disk,
// without the window where the new file is still empty). Of any number of racers, one wins.
//
// Taking over an expired lease (its holder died or hung): the race is between takers that have
// all read the same stale lease T. Renaming K.lock away and checking what one got is not enough:
// a slow taker could rename away the *fresh* lease a faster taker has just put there, and while
// it puts it back a third one could create another, leaving two holders. Instead, removing or
// replacing lease T (takeover, release, renew) first needs the claim file of T, created with
// O_EXCL ('wx'): of all who want to act on T, exactly one creates it. The claimer then reads
// K.lock again, and acts only if it still holds T. That read cannot be stale: T can leave K.lock
// only through the holder of T's claim, which is the claimer itself; and nobody can create
// K.lock while T is there. The claimer replaces T with its own lease by rename() over K.lock
// (atomic: K.lock is never missing, so no plain acquirer can slip in), then deletes T's claims.
// A taker that read T but comes late finds its claim refused, or gets one and finds K.lock no
// longer holds T (tokens are never reused), and backs off.
//
// A claimer that crashes between creating the claim and deleting it (a few file operations)
// would leave T impossible to remove forever. So a claim older than claimGraceMs (30 s; mtime)
// is taken for dead, and the next generation decides: claim<n+1>, again created with O_EXCL,
// so again one winner. Assumptions, as with any lease: no process stays inside those few file
// operations for longer than the grace, no holder keeps acting after its lease expired (the
// failover renews before it starts anything), and the clocks of the hosts sharing the
// directory agree to well within the lease TTL (expiresAt is wall-clock time).
import { randomBytes, createHash } from 'node:crypto';
import { link, mkdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ErrorCode, VesperError } from '../../proto/errors.js';

export interface LeaseHolder {
  owner: string;
  pid: number;
  host: string;
}

export interface Lease extends LeaseHolder {
  readonly key: string;
  /** wall-clock ms (Date.now()) until which the lease holds */
  readonly expiresAt: number;
  readonly ttlMs: number;
  /** names this one lease file; renew gives a new lease with a new token */
  readonly token: string;
  /**
   * The fencing token: one more than the last holder's, kept by renew. Only the holder writes the
   * counter, so it grows while the lease works; with the lease broken two holders may get the same.
   */
  readonly fence: number;
}

export type AcquireResult =
  { ok: true; lease: Lease } | { ok: false; /** the holder's owner name */ heldBy: string; expiresAt: number; holder: LeaseHolder };

export interface FenceLockOptions {
  /** how old a claim file must be to be taken for a dead claimer's (default 30 s) */
  claimGraceMs?: number;
  /** the clock (default Date.now); tests move it */
  now?: () => number;
  /** written into leases (default os.hostname()) */
  host?: string;
}

const DEFAULT_CLAIM_GRACE_MS = 30_000;
/** Rounds of "create, or read what is there" before tryAcquire gives up (each round is quick). */
const ACQUIRE_ROUNDS = 16;
/** Claim generations tried for one lease (each needs all before it dead). */
const CLAIM_GENERATIONS = 8;

export class FenceLock {
  readonly dir: string;
  private readonly claimGraceMs: number;
  private readonly now: () => number;
  private readonly host: string;
  private dirReady: Promise<unknown> | null = null;

  constructor(dir: string, o: FenceLockOptions = {}) {
    this.dir = dir;
    this.claimGraceMs = o.claimGraceMs ?? DEFAULT_CLAIM_GRACE_MS;
    this.now = o.now ?? Date.now;
    this.host = o.host ?? hostname();
  }

  /** Takes the lease on `key` if it is free or expired; never waits for a live holder. */
  async tryAcquire(key: string, owner: string, ttlMs: number): Promise<AcquireResult> {
    if (!owner) throw new VesperError(ErrorCode.USAGE, 'fence lock: owner must not be empty');
    if (!(ttlMs > 0)) throw new VesperError(ErrorCode.USAGE, `fence lock: ttl must be positive, got ${ttlMs}`);
    const name = fileKey(key);
    await this.ensureDir();
    const token = newToken();
    const tmp = this.path(`${name}.lock.${token}.tmp`);
    const lockPath = this.path(`${name}.lock`);
    const lease = (): Lease => ({ key, owner, pid: process.pid, host: this.host, expiresAt: this.now() + ttlMs, ttlMs, token, fence: 0 });
    let last: StoredLease | null = null;
    try {
      for (let round = 0; round < ACQUIRE_ROUNDS; round++) {
        const mine = lease();
        await this.writeLease(tmp, mine);
        try {
          await link(tmp, lockPath);
          return { ok: true, lease: { ...mine, fence: await this.nextFence(name, token) } };
        } catch (err) {
          if (errno(err) !== 'EEXIST') throw this.ioError(`create ${lockPath}`, err);
        }
        const cur = await this.readLease(lockPath);
        if (!cur) continue; // released between our link and our read: try again
        last = cur;
        if (cur.expiresAt > this.now()) return held(cur);
        // Expired: whoever gets T's claim may replace it.
        const claim = await this.claim(name, cur.token);
        if (!claim) {
          await sleep(2 + Math.floor(Math.random() * 10)); // another taker is at it: see what it did
          continue;
        }
        try {
          const again = await this.readLease(lockPath);
          if (!again || again.token !== cur.token) continue; // we read late: it is gone already
          const taken = lease();
          await this.writeLease(tmp, taken);
          await rename(tmp, lockPath);
          return { ok: true, lease: { ...taken, fence: await this.nextFence(name, token) } };
        } finally {
          await this.dropClaims(name, cur.token, claim.generation);
        }
      }
    } finally {
      await unlink(tmp).catch(() => undefined); // after link() it is a second name; after rename() it is gone
    }
    // Only under heavy churn (leases released and taken faster than we can look).
    return last ? held(last) : { ok: false, heldBy: 'unknown', expiresAt: 0, holder: { owner: 'unknown', pid: 0, host: '' } };
  }

  /** Removes the lease if it is still this one (same token and owner); returns whether it did. */
  async release(lease: Lease): Promise<boolean> {
    const name = fileKey(lease.key);
    const lockPath = this.path(`${name}.lock`);
    const cur = await this.readLease(lockPath);
    if (!isSame(cur, lease)) return false;
    const claim = await this.claim(name, lease.token);
    if (!claim) return false; // a taker is replacing it: it had expired, it is not ours any more
    try {
      const again = await this.readLease(lockPath);
      if (!isSame(again, lease)) return false;
      await unlink(lockPath);
      return true;
    } finally {
      await this.dropClaims(name, lease.token, claim.generation);
    }
  }

  /**
   * Extends the lease: replaces it by a new one (new token, expiry now + ttl). Rejects with
   * VSP_FENCE_LOCKED when the lease is not ours any more (taken over after it expired, or
   * released); the holder must then stop whatever the lease protected.
   */
  async renew(lease: Lease, ttlMs: number = lease.ttlMs): Promise<Lease> {
    const name = fileKey(lease.key);
    const lockPath = this.path(`${name}.lock`);
    const lost = (why: string): VesperError =>
      new VesperError(ErrorCode.FENCE_LOCKED, `fence lock on ${JSON.stringify(lease.key)} lost by ${lease.owner}: ${why}`);
    const cur = await this.readLease(lockPath);
    if (!isSame(cur, lease)) throw lost(cur ? `now held by ${describeHolder(cur)}` : 'it was removed');
    const claim = await this.claim(name, lease.token);
    if (!claim) throw lost('it expired and is being taken over');
    const token = newToken();
    const tmp = this.path(`${name}.lock.${token}.tmp`);
    try {
      const again = await this.readLease(lockPath);
      if (!isSame(again, lease)) throw lost(again ? `now held by ${describeHolder(again)}` : 'it was removed');
      const next: Lease = { ...lease, expiresAt: this.now() + ttlMs, ttlMs, token };
      await this.writeLease(tmp, next);
      await rename(tmp, lockPath);
      return next;
    } finally {
      await unlink(tmp).catch(() => undefined);
      await this.dropClaims(name, lease.token, claim.generation);
    }
  }

  /** The current lease on `key` (expired or not), or null. */
  async current(key: string): Promise<(LeaseHolder & { expiresAt: number }) | null> {
    const cur = await this.readLease(this.path(`${fileKey(key)}.lock`));
    return cur ? { owner: cur.owner, pid: cur.pid, host: cur.host, expiresAt: cur.expiresAt } : null;
  }

  // ------------------------------------------------------------------ files

  private path(file: string): string {
    return join(this.dir, file);
  }

  private ensureDir(): Promise<unknown> {
    if (!this.dirReady) {
      const p = mkdir(this.dir, { recursive: true }).catch((err: unknown) => {
        this.dirReady = null;
        throw this.ioError(`create directory ${this.dir}`, err);
      });
      this.dirReady = p;
    }
    return this.dirReady;
  }

  /** Takes the next fencing token for `name`: called by a new holder only, right after it won. */
  private async nextFence(name: string, token: string): Promise<number> {
    const file = this.path(`${name}.fence`);
    let last = 0;
    try {
      const n = Number((await readFile(file, 'utf8')).trim());
      if (Number.isSafeInteger(n) && n > 0) last = n;
    } catch (err) {
      if (errno(err) !== 'ENOENT') throw this.ioError(`read ${file}`, err);
    }
    const tmp = this.path(`${name}.fence.${token}.tmp`);
    try {
      await writeFile(tmp, `${last + 1}\n`, { mode: 0o644 });
      await rename(tmp, file);
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw this.ioError(`write ${file}`, err);
    }
    return last + 1;
  }

  private async writeLease(file: string, lease: Lease): Promise<void> {
    const body: StoredLease = {
      key: lease.key,
      owner: lease.owner,
      pid: lease.pid,
      host: lease.host,
      expiresAt: lease.expiresAt,
      ttlMs: lease.ttlMs,
      token: lease.token,
    };
    try {
      await writeFile(file, `${JSON.stringify(body)}\n`, { mode: 0o644 });
    } catch (err) {
      throw this.ioError(`write ${file}`, err);
    }
  }

  /** The lease at `file`, or null when there is none. A damaged file counts as a lease that
   * expires one claim grace after it was last written, so that it is cleaned up, not obeyed forever. */
  private async readLease(file: string): Promise<StoredLease | null> {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if (errno(err) === 'ENOENT') return null;
      throw this.ioError(`read ${file}`, err);
    }
    const parsed = parseLease(text);
    if (parsed) return parsed;
    let st;
    try {
      st = await stat(file);
    } catch (err) {
      if (errno(err) === 'ENOENT') return null;
      throw this.ioError(`stat ${file}`, err);
    }
    return {
      key: '',
      owner: 'unknown (damaged lease file)',
      pid: 0,
      host: '',
      expiresAt: st.mtimeMs + this.claimGraceMs,
      ttlMs: 0,
      token: `damaged-${st.ino}-${Math.floor(st.mtimeMs)}-${st.size}`,
    };
  }

  /**
   * Creates the claim on lease `token`: generation 0, or the next one when every earlier one is
   * older than the grace (its claimer died). Null when a live claimer holds it.
   */
  private async claim(name: string, token: string): Promise<{ generation: number } | null> {
    const body = `${JSON.stringify({ pid: process.pid, host: this.host, at: this.now() })}\n`;
    for (let gen = 0, tries = 0; gen < CLAIM_GENERATIONS && tries < CLAIM_GENERATIONS * 4; tries++) {
      const file = this.path(`${name}.lock.${token}.claim${gen}`);
      try {
        await writeFile(file, body, { flag: 'wx', mode: 0o644 });
        return { generation: gen };
      } catch (err) {
        if (errno(err) !== 'EEXIST') throw this.ioError(`create ${file}`, err);
      }
      let ageMs: number;
      try {
        // Real time, not this.now(): a claim's age is how long its claimer has been at it.
        ageMs = Date.now() - (await stat(file)).mtimeMs;
      } catch (err) {
        if (errno(err) === 'ENOENT') continue; // its claimer just finished: try the same generation again
        throw this.ioError(`stat ${file}`, err);
      }
      if (ageMs < this.claimGraceMs) return null;
      gen++;
    }
    return null;
  }

  private async dropClaims(name: string, token: string, upTo: number): Promise<void> {
    // Highest first: a late taker that finds generation 0 gone claims it and then sees the
    // lease changed, which is harmless either way.
    for (let gen = upTo; gen >= 0; gen--) await unlink(this.path(`${name}.lock.${token}.claim${gen}`)).catch(() => undefined);
  }

  private ioError(what: string, err: unknown): VesperError {
    if (err instanceof VesperError) return err;
    return new VesperError(ErrorCode.FENCE_FAILED, `fence lock: cannot ${what}: ${(err as Error).message}`, errno(err) ?? '', {
      cause: err,
    });
  }
}

interface StoredLease extends LeaseHolder {
  key: string;
  expiresAt: number;
  ttlMs: number;
  token: string;
}

function parseLease(text: string): StoredLease | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (v === null || typeof v !== 'object') return null;
  const o = v as Record<string, unknown>;
  if (typeof o.owner !== 'string' || typeof o.token !== 'string' || !/^[A-Za-z0-9-]+$/.test(o.token)) return null;
  if (typeof o.expiresAt !== 'number' || !Number.isFinite(o.expiresAt)) return null;
  return {
    key: typeof o.key === 'string' ? o.key : '',
    owner: o.owner,
    pid: typeof o.pid === 'number' ? o.pid : 0,
    host: typeof o.host === 'string' ? o.host : '',
    expiresAt: o.expiresAt,
    ttlMs: typeof o.ttlMs === 'number' ? o.ttlMs : 0,
    token: o.token,
  };
}

function isSame(cur: StoredLease | null, lease: Lease): boolean {
  return cur !== null && cur.token === lease.token && cur.owner === lease.owner;
}

function held(cur: StoredLease): AcquireResult {
  return { ok: false, heldBy: cur.owner, expiresAt: cur.expiresAt, holder: { owner: cur.owner, pid: cur.pid, host: cur.host } };
}

/** "owner (pid 123 on host-a)", for messages. */
export function describeHolder(h: LeaseHolder): string {
  const where = [h.pid ? `pid ${h.pid}` : '', h.host ? `on ${h.host}` : ''].filter(Boolean).join(' ');
  return where ? `${h.owner} (${where})` : h.owner;
}

function newToken(): string {
  return randomBytes(16).toString('hex');
}

/**
 * The key as a file name: letters, digits, '_', '-' and '.' (not leading) stay, other bytes
 * become %XX. A name too long for the file system becomes a hash.
 */
export function fileKey(key: string): string {
  if (key === '') throw new VesperError(ErrorCode.USAGE, 'fence lock: the key (VM name) must not be empty');
  let out = '';
  for (const b of Buffer.from(key, 'utf8')) {
    const c = String.fromCharCode(b);
    out += /[A-Za-z0-9_-]/.test(c) || (c === '.' && out !== '') ? c : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out.length <= 180 ? out : `%H${createHash('sha256').update(key).digest('hex')}`;
}

function errno(err: unknown): string | undefined {
  const code = (err as { code?: unknown })?.code;
  return typeof code === 'string' ? code : undefined;
}
