// Where the product finds its probe catalogue and agent bundle (host/assets.ts): the
// VESPER_ASSETS override, the install the running bundle lies in, a built checkout, the
// default prefix, and a clear VSP_ASSETS_MISSING when none holds them. Folders are made in a
// temporary directory; nothing depends on where this checkout lies.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { agentBundlePath, findAssets } from '../../host/assets.js';
import { probeNames, readProbeBundle } from '../../host/probes/package.js';

let tmp: string;
beforeEach(() => {
  tmp = mkdtempSync(join(tmpdir(), 'vesper-assets-'));
});
afterEach(() => rmSync(tmp, { recursive: true, force: true }));

/** An install layout at prefix: host/vesper.mjs, probes/, agent/vesper-agent.mjs. */
function makeInstall(prefix: string, probes: string[] = ['signal']): void {
  mkdirSync(join(prefix, 'host'), { recursive: true });
  mkdirSync(join(prefix, 'probes'), { recursive: true });
  mkdirSync(join(prefix, 'agent'), { recursive: true });
  writeFileSync(join(prefix, 'host', 'vesper.mjs'), '');
  writeFileSync(join(prefix, 'agent', 'vesper-agent.mjs'), '// agent');
  for (const p of probes) {
    writeFileSync(join(prefix, 'probes', `${p}.mjs`), `export default '${p}';`);
    writeFileSync(join(prefix, 'probes', `${p}.manifest.json`), JSON.stringify({ name: p, version: '1.0.0' }));
  }
}

/** A built checkout: package.json, dist/{host,probes,guest-agent}. */
function makeCheckout(root: string): void {
  mkdirSync(join(root, 'dist', 'host'), { recursive: true });
  mkdirSync(join(root, 'dist', 'probes'), { recursive: true });
  mkdirSync(join(root, 'dist', 'guest-agent'), { recursive: true });
  mkdirSync(join(root, 'probes', 'signal'), { recursive: true });
  writeFileSync(join(root, 'package.json'), '{}');
  writeFileSync(join(root, 'dist', 'host', 'vesper.mjs'), '');
}

describe('findAssets', () => {
  it('uses the install the running bundle lies in', () => {
    const prefix = join(tmp, 'opt', 'vesper');
    makeInstall(prefix);
    const a = findAssets({ env: {}, selfPath: join(prefix, 'host', 'vesper.mjs'), installPrefix: join(tmp, 'none') });
    expect(a).toEqual({ probesDir: join(prefix, 'probes'), agentBundle: join(prefix, 'agent', 'vesper-agent.mjs'), from: 'install' });
  });

  it('VESPER_ASSETS wins over everything else', () => {
    const prefix = join(tmp, 'install');
    const other = join(tmp, 'override');
    makeInstall(prefix);
    makeInstall(other);
    const a = findAssets({ env: { VESPER_ASSETS: other }, selfPath: join(prefix, 'host', 'vesper.mjs') });
    expect(a.from).toBe('env');
    expect(a.probesDir).toBe(join(other, 'probes'));
  });

  it('refuses a VESPER_ASSETS that is not an install layout, naming it', () => {
    const bad = join(tmp, 'empty');
    mkdirSync(bad);
    expect(() => findAssets({ env: { VESPER_ASSETS: bad }, selfPath: join(tmp, 'x', 'host', 'vesper.mjs') })).toThrow(
      expect.objectContaining({ code: 'VSP_ASSETS_MISSING', message: expect.stringContaining(bad) }),
    );
  });

  it('a checkout uses its own dist/, even when an install exists at the default prefix', () => {
    const root = join(tmp, 'src', 'vesper');
    const prefix = join(tmp, 'usr', 'lib', 'vesper');
    makeCheckout(root);
    makeInstall(prefix);
    const a = findAssets({ env: {}, selfPath: join(root, 'dist', 'host', 'vesper.mjs'), installPrefix: prefix });
    expect(a).toEqual({
      probesDir: join(root, 'dist', 'probes'),
      agentBundle: join(root, 'dist', 'guest-agent', 'vesper-agent.mjs'),
      from: 'checkout',
    });
    // run from source (tsx): host/assets.ts inside the checkout
    expect(findAssets({ env: {}, selfPath: join(root, 'host', 'assets.ts'), installPrefix: prefix }).from).toBe('checkout');
  });

  it('falls back to the default install prefix for a program elsewhere', () => {
    const prefix = join(tmp, 'usr', 'lib', 'vesper');
    makeInstall(prefix);
    const a = findAssets({ env: {}, selfPath: join(tmp, 'elsewhere', 'bin', 'x.mjs'), installPrefix: prefix });
    expect(a.probesDir).toBe(join(prefix, 'probes'));
    expect(a.from).toBe('install');
  });

  it('says where it looked when nothing holds the assets', () => {
    const self = join(tmp, 'lone', 'host', 'vesper.mjs');
    const prefix = join(tmp, 'nothing-here');
    let err: unknown;
    try {
      findAssets({ env: {}, selfPath: self, installPrefix: prefix });
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'VSP_ASSETS_MISSING' });
    expect((err as Error).message).toContain(prefix);
    expect((err as Error).message).toContain(join(tmp, 'lone'));
  });

  it('agentBundlePath checks that the bundle exists', () => {
    const root = join(tmp, 'co');
    makeCheckout(root);
    expect(() => agentBundlePath({ env: {}, selfPath: join(root, 'dist', 'host', 'vesper.mjs'), installPrefix: join(tmp, 'n') })).toThrow(
      expect.objectContaining({ code: 'VSP_ASSETS_MISSING', message: expect.stringContaining('npm run build') }),
    );
    writeFileSync(join(root, 'dist', 'guest-agent', 'vesper-agent.mjs'), '');
    expect(agentBundlePath({ env: {}, selfPath: join(root, 'dist', 'host', 'vesper.mjs'), installPrefix: join(tmp, 'n') })).toBe(
      join(root, 'dist', 'guest-agent', 'vesper-agent.mjs'),
    );
  });
});

describe('the probe catalogue in an install layout', () => {
  it('lists and reads probes by <name>.manifest.json beside <name>.mjs', () => {
    const prefix = join(tmp, 'inst');
    makeInstall(prefix, ['signal', 'oom']);
    writeFileSync(join(prefix, 'probes', 'stray.mjs'), ''); // code without a manifest is not a probe
    const dir = join(prefix, 'probes');
    expect(probeNames(dir)).toEqual(['oom', 'signal']);
    const b = readProbeBundle('oom', dir);
    expect(b.manifest).toMatchObject({ name: 'oom' });
    expect(b.code.toString()).toBe("export default 'oom';");
    expect(() => readProbeBundle('stray', dir)).toThrow(expect.objectContaining({ code: 'VSP_PROBE_NOT_FOUND' }));
    expect(() => readProbeBundle('../inst/probes/oom', dir)).toThrow(expect.objectContaining({ code: 'VSP_PROBE_NOT_FOUND' }));
  });

  it('an unreadable catalogue is VSP_ASSETS_MISSING', () => {
    expect(() => probeNames(join(tmp, 'no-such'))).toThrow(expect.objectContaining({ code: 'VSP_ASSETS_MISSING' }));
  });
});
