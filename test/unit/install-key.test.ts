// Which key `vesper agent install` gives the agent (host/keys.ts installKeyPlan): vesperd's,
// found before any connection and without creating anything; a key is created only where
// vesperd will find it, and a user who cannot know vesperd's key is refused with the reason.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SYSTEM_KEY_DIR, installKeyPlan, loadOrCreateHostKey } from '../../host/keys.js';
import { ErrorCode, exitStatusFor } from '../../proto/errors.js';
import { caught } from '../helpers/caught.js';

describe('installKeyPlan: the key vesper agent install pushes', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'vesper-install-key-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('the system directory is /etc/vesper, where vesperd keeps its key as root (as its unit runs it)', () => {
    expect(SYSTEM_KEY_DIR).toBe('/etc/vesper');
  });

  it("vesperd's existing key: its public half, from host.key as vesperd reads it, not a stale host.pub", () => {
    const sys = join(dir, 'etc-vesper');
    const key = loadOrCreateHostKey(sys);
    writeFileSync(join(sys, 'host.pub'), loadOrCreateHostKey(join(dir, 'other')).publicPem); // stale copy
    for (const uid of [0, 1000])
      expect(installKeyPlan({ env: {}, uid, systemDir: sys })).toEqual({ dir: sys, publicPem: key.publicPem, create: false });
  });

  it('host.pub alone is enough (a user who may not read host.key)', () => {
    const sys = join(dir, 'etc-vesper');
    const key = loadOrCreateHostKey(sys);
    rmSync(join(sys, 'host.key'));
    expect(installKeyPlan({ env: {}, uid: 1000, systemDir: sys })).toEqual({ dir: sys, publicPem: key.publicPem, create: false });
  });

  it("a user other than root never takes ~/.config/vesper: without VESPER_KEY_DIR and without vesperd's key, refused, nothing created", () => {
    const home = join(dir, 'home');
    mkdirSync(home);
    loadOrCreateHostKey(join(home, '.config', 'vesper')); // a key of that user's own, not vesperd's
    const sys = join(dir, 'etc-vesper'); // vesperd never started: no key yet
    const e = caught(() => installKeyPlan({ env: { HOME: home }, uid: 1000, systemDir: sys }));
    expect(e.code).toBe(ErrorCode.KEY_MISSING);
    expect(exitStatusFor(e.code)).toBe(66);
    expect(e.message).toContain(`vesperd has no signing key yet: ${sys}/host.pub does not exist`);
    expect(e.message).toMatch(/nothing was installed/);
    expect(e.message).toMatch(/Run the install as root, or point VESPER_KEY_DIR at the directory of the vesperd/);
    expect(existsSync(sys)).toBe(false);
  });

  it('root without a key yet: created in the system directory, but only once connected (a plan, nothing on disk now)', () => {
    const sys = join(dir, 'etc-vesper');
    expect(installKeyPlan({ env: {}, uid: 0, systemDir: sys })).toEqual({ dir: sys, create: true });
    expect(existsSync(sys)).toBe(false);
  });

  it("VESPER_KEY_DIR names vesperd's key directory for anyone: used when there, else created there once connected", () => {
    const named = join(dir, 'named');
    const sys = join(dir, 'etc-vesper');
    loadOrCreateHostKey(sys);
    expect(installKeyPlan({ env: { VESPER_KEY_DIR: named }, uid: 1000, systemDir: sys })).toEqual({ dir: named, create: true });
    expect(existsSync(named)).toBe(false);
    const key = loadOrCreateHostKey(named);
    expect(installKeyPlan({ env: { VESPER_KEY_DIR: named }, uid: 1000, systemDir: sys })).toEqual({
      dir: named,
      publicPem: key.publicPem,
      create: false,
    });
  });

  it('a key file that is not a key is VSP_KEY_INVALID', () => {
    const sys = join(dir, 'etc-vesper');
    mkdirSync(sys);
    writeFileSync(join(sys, 'host.pub'), 'not a key\n');
    expect(caught(() => installKeyPlan({ env: {}, uid: 1000, systemDir: sys })).code).toBe(ErrorCode.KEY_INVALID);
  });

  it('new key directories are readable by all (host.pub is public; host.key stays 0600)', () => {
    const d = join(dir, 'fresh');
    loadOrCreateHostKey(d);
    expect(readdirSync(d).sort()).toEqual(['host.key', 'host.pub']);
    expect(statSync(d).mode & 0o777).toBe(0o755);
    expect(statSync(join(d, 'host.key')).mode & 0o777).toBe(0o600);
    expect(statSync(join(d, 'host.pub')).mode & 0o777).toBe(0o644);
  });
});
