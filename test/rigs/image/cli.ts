// Builds (or finds in the cache) the guest image and prints its paths as JSON on stdout.
//   tsx test/rigs/image/cli.ts [--test-helpers] [--key PEM-FILE] [--cache DIR]
//   tsx test/rigs/image/cli.ts --distro debian12|debian13 [--key PEM-FILE] [--cache DIR]
//     (a Debian guest with systemd, sshd, nginx and the vesper-agent package: test/rigs/distro/)
// Progress goes to stderr, so stdout stays machine-readable.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ErrorCode, VesperError, exitStatusFor } from '../../../proto/errors.js';
import { loadOrCreateHostKey } from '../../../host/keys.js';
import { GUEST_KERNEL_CMDLINE, buildGuestImage } from './build.js';
import { DISTROS, DISTRO_KERNEL_CMDLINE, buildDistroImage, isDistro } from '../distro/image.js';
import { projectRoot } from '../../helpers/project-root.js';
import { join } from 'node:path';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'test-helpers': { type: 'boolean', default: false },
      key: { type: 'string' },
      cache: { type: 'string' },
      distro: { type: 'string' },
    },
  });
  const started = performance.now();
  const onProgress = (step: string, detail?: string): void => {
    process.stderr.write(`[${((performance.now() - started) / 1000).toFixed(1)}s] ${step}${detail ? `: ${detail}` : ''}\n`);
  };
  if (values.distro !== undefined) {
    if (!isDistro(values.distro)) throw new TypeError(`--distro ${values.distro}: one of ${Object.keys(DISTROS).join(', ')}`);
    const key = values.key ? readFileSync(values.key, 'utf8') : loadOrCreateHostKey(join(projectRoot(), '.cache', 'keys')).publicPem;
    const image = await buildDistroImage(values.distro, { hostPubKeyPem: key, cacheDir: values.cache, onProgress });
    process.stdout.write(`${JSON.stringify({ ...image, cmdline: DISTRO_KERNEL_CMDLINE }, null, 2)}\n`);
    return;
  }
  const image = await buildGuestImage({
    hostPubKeyPem: values.key ? readFileSync(values.key, 'utf8') : loadOrCreateHostKey().publicPem,
    testHelpers: values['test-helpers'],
    cacheDir: values.cache,
    onProgress,
  });
  process.stdout.write(`${JSON.stringify({ ...image, cmdline: GUEST_KERNEL_CMDLINE }, null, 2)}\n`);
}

main().catch((err: unknown) => {
  const e = VesperError.from(err, err instanceof TypeError ? ErrorCode.USAGE : ErrorCode.INTERNAL);
  process.stderr.write(`vesper-image: ${e.message}\n`);
  process.exitCode = exitStatusFor(e.code);
});
