import { expect } from 'vitest';
import { VesperError } from '../../proto/errors.js';

/** Runs fn, expecting a VesperError; returns it. */
export function caught(fn: () => unknown): VesperError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(VesperError);
    return err as VesperError;
  }
  throw new Error('expected a VesperError, nothing was thrown');
}
