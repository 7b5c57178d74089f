// What vesperd keeps of a failed link attempt for `vesper status`: the error's code and a message
// cut to MAX_LINK_ERROR, whatever the other end said (an SSH relay's stderr ends up in it).
import { describe, expect, it } from 'vitest';
import { GuestLink, MAX_LINK_ERROR } from '../../host/daemon/guest-link.js';
import type { IngestBatcher } from '../../host/daemon/ingest.js';
import type { HostKey } from '../../host/keys.js';
import { VesperError } from '../../proto/errors.js';
import { waitFor } from '../helpers/wait.js';

describe('a failed link attempt', () => {
  it('is kept with its code and a message of at most MAX_LINK_ERROR characters', async () => {
    const said = `relay: ${'x'.repeat(100_000)}`;
    const warned: string[] = [];
    const log = { warn: (o: { err?: string }) => warned.push(o.err ?? ''), info: () => undefined, error: () => undefined };
    const link = new GuestLink(
      'vm1',
      { transport: 'ssh', where: 'u@h', open: () => Promise.reject(new VesperError('VSP_SSH_REMOTE_FAILED', said)) },
      {
        key: {} as HostKey,
        batcher: {} as IngestBatcher,
        heldFor: () => 0,
        hostEvent: () => undefined,
        log: log as never,
        minBackoffMs: 1000,
      },
    );
    try {
      link.start();
      const e = await waitFor('the link error', () => link.linkError ?? undefined, 5000, 5);
      expect(e.code).toBe('VSP_SSH_REMOTE_FAILED');
      expect(e.message.length).toBeLessThanOrEqual(MAX_LINK_ERROR + 40);
      expect(e.message).toContain('(100007 characters)');
      expect(Math.max(...warned.map((w) => w.length))).toBeLessThanOrEqual(MAX_LINK_ERROR + 40);
    } finally {
      link.stop();
    }
  });
});
