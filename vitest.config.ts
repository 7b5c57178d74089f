import { defineConfig, type Plugin } from 'vitest/config';

/** host/ssh/remote/*.sh and *.service as text, as esbuild's text loader does in scripts/build.mjs. */
const text: Plugin = {
  name: 'vesper-text',
  transform: (code, id) => (/\.(sh|service)$/.test(id) ? { code: `export default ${JSON.stringify(code)};`, map: null } : null),
};

export default defineConfig({
  test: {
    projects: [
      {
        plugins: [text],
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          testTimeout: 20_000,
        },
      },
      {
        plugins: [text],
        test: {
          name: 'acceptance',
          include: ['test/acceptance/**/*.test.ts'],
          globalSetup: ['test/global-libvirt.ts'],
          // Real kernels, real processes: one file at a time, generous per-test limits.
          fileParallelism: false,
          testTimeout: 120_000,
          hookTimeout: 120_000,
        },
      },
    ],
  },
});
