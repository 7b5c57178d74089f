import { describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/wait.js';

describe('waitFor', () => {
  it('awaits an async check instead of taking its promise for the answer', async () => {
    let n = 0;
    const v = await waitFor('third poll', async () => (++n >= 3 ? n : false), 2000, 1);
    expect(v).toBe(3);
  });

  it('times out, naming what it waited for', async () => {
    await expect(waitFor('never', async () => false, 30, 5)).rejects.toThrow(/waiting for never/);
  });
});
