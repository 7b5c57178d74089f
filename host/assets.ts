// Where the files vesper pushes live: the probe catalogue (each probe's bundle and manifest,
// signed by the host when it is pushed) and the guest agent's bundle. The product never looks
// for a source tree; it finds them, in this order:
//
//   1. $VESPER_ASSETS: a folder laid out as an install (probes/, agent/);
//   2. the install this program runs from: the running bundle is <prefix>/host/vesper.mjs and
//      <prefix>/probes/ lies beside it (the Debian package's /usr/lib/vesper, or any prefix
//      the tree was copied to);
//   3. a source checkout holding the running code (a development run):
//      <checkout>/dist/{probes,guest-agent}/, as `npm run build` makes them;
//   4. the default install prefix, /usr/lib/vesper.
//
// The install layout (what `npm run package` puts under /usr/lib/vesper):
//   probes/<name>.mjs, probes/<name>.manifest.json     the catalogue
//   agent/vesper-agent.mjs                             the agent bundle
// `npm run build` makes dist/ the same shape, except that the agent is dist/guest-agent/.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ErrorCode, VesperError } from '../proto/errors.js';

export const DEFAULT_INSTALL_PREFIX = '/usr/lib/vesper';
export const AGENT_BUNDLE = 'vesper-agent.mjs';

export interface Assets {
  /** holds <name>.mjs and <name>.manifest.json for each probe */
  probesDir: string;
  /** the agent bundle (one file) */
  agentBundle: string;
  /** where they were found, for messages: env, install, checkout */
  from: 'env' | 'install' | 'checkout';
}

export interface FindAssetsOptions {
  env?: NodeJS.ProcessEnv;
  /** the path of the running module (default this file's, or the bundle it was built into) */
  selfPath?: string;
  installPrefix?: string;
}

function installAt(prefix: string): Omit<Assets, 'from'> {
  return { probesDir: join(prefix, 'probes'), agentBundle: join(prefix, 'agent', AGENT_BUNDLE) };
}

function looksInstalled(prefix: string): boolean {
  return existsSync(join(prefix, 'probes')) && existsSync(join(prefix, 'agent'));
}

/** The built checkout holding `from`, if any: a folder with package.json and dist/. */
function checkoutOf(from: string): string | null {
  let dir = dirname(from);
  for (let i = 0; i < 8; i++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'dist'))) return dir;
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return null;
}

/** Finds the asset folders (see the header); throws VSP_ASSETS_MISSING naming every place looked at. */
export function findAssets(o: FindAssetsOptions = {}): Assets {
  const env = o.env ?? process.env;
  const self = o.selfPath ?? fileURLToPath(import.meta.url);
  const tried: string[] = [];

  const override = env['VESPER_ASSETS'];
  if (override) {
    if (looksInstalled(override)) return { ...installAt(override), from: 'env' };
    throw new VesperError(
      ErrorCode.ASSETS_MISSING,
      `VESPER_ASSETS=${override} holds no probes/ and agent/ folders (an install's layout, as /usr/lib/vesper)`,
    );
  }

  // 2: the running bundle is <prefix>/host/vesper.mjs
  const besideSelf = dirname(dirname(self));
  tried.push(besideSelf);
  if (looksInstalled(besideSelf)) return { ...installAt(besideSelf), from: 'install' };

  // 3: a checkout runs its own build, even on a host where the package is installed too
  const checkout = checkoutOf(self);
  if (checkout) {
    const dist = join(checkout, 'dist');
    return { probesDir: join(dist, 'probes'), agentBundle: join(dist, 'guest-agent', AGENT_BUNDLE), from: 'checkout' };
  }

  const prefix = o.installPrefix ?? DEFAULT_INSTALL_PREFIX;
  tried.push(prefix);
  if (looksInstalled(prefix)) return { ...installAt(prefix), from: 'install' };
  throw new VesperError(
    ErrorCode.ASSETS_MISSING,
    `cannot find vesper's probes and agent: looked in ${tried.join(', ')} and for a built source checkout ` +
      `(set VESPER_ASSETS to an install folder, or run npm run build in the checkout)`,
  );
}

/** The agent bundle, checked to exist. */
export function agentBundlePath(o?: FindAssetsOptions): string {
  const a = findAssets(o);
  if (!existsSync(a.agentBundle))
    throw new VesperError(
      ErrorCode.ASSETS_MISSING,
      a.from === 'checkout'
        ? `the agent is not built (${a.agentBundle}): run npm run build`
        : `the agent bundle ${a.agentBundle} is missing (reinstall the vesper package)`,
    );
  return a.agentBundle;
}
