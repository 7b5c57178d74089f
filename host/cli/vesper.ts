// The `vesper` command's entry point (bundled to dist/host/vesper.mjs).
import { main } from './main.js';

await main();
