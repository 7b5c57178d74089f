// `--import ./scripts/text-import.mjs`: registers scripts/text-hooks.mjs (see there).
import { register } from 'node:module';

register('./text-hooks.mjs', import.meta.url);
