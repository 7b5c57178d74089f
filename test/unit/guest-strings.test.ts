// Guest strings capped at their kernel meaning: a 64 KiB comm is neither stored in full nor
// printed in full; a record under the ingest threshold with a long comm still reads capped.
import { describe, expect, it } from 'vitest';
import { AgentRecord } from '../../proto/record.js';
import { GuestLink } from '../../host/daemon/guest-link.js';
import type { IngestBatcher } from '../../host/daemon/ingest.js';
import { loadOrCreateHostKey } from '../../host/keys.js';
import type { VesperEvent } from '../../host/notify/event.js';
import { MAX_HONEST_RECORD_BYTES, capOversizedRecord, capUtf8 } from '../../host/notify/guest-strings.js';
import { RecordEvent, payloadOfRecord } from '../../host/notify/record-event.js';
import { decodeRecord, v1 } from '../../proto/codec.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';

function signalRecord(comm: string, seq = 1): Uint8Array {
  return v1.Record.encode({
    seq,
    monoNs: 1,
    wallNs: 1_700_000_000_000_000_000,
    handle: 1,
    eventId: 1,
    signal: { sig: 9, sender: { pid: 1, comm }, target: { pid: 2, comm: 'victim' } },
  }).finish();
}

describe('guest strings', () => {
  it('capUtf8 cuts on a character boundary, at most the cap in bytes', () => {
    expect(capUtf8('systemd', 15)).toBe('systemd');
    expect(capUtf8('a'.repeat(16), 15)).toBe('a'.repeat(15));
    const s = 'é'.repeat(10); // 20 bytes
    const c = capUtf8(s, 15);
    expect(Buffer.byteLength(c)).toBeLessThanOrEqual(15);
    expect(c).toBe('é'.repeat(7));
    expect(capUtf8('€€€€€€', 15)).toBe('€€€€€'); // 3-byte characters
  });

  it('a 64 KiB comm is capped to 15 bytes before storing; the record stays a small one', () => {
    const bytes = signalRecord('x'.repeat(64 * 1024));
    expect(bytes.length).toBeGreaterThan(MAX_HONEST_RECORD_BYTES);
    const c = capOversizedRecord(bytes)!;
    expect(c).not.toBeNull();
    expect(c.cut).toBe(1);
    expect(c.bytes.length).toBeLessThan(200);
    const back = decodeRecord(c.bytes);
    expect(back.signal?.sender?.comm).toBe('x'.repeat(15));
    expect(back.signal?.target?.comm).toBe('victim');
    expect(Number(back.seq)).toBe(1);
  });

  it('an honest record is left as it came (no decode)', () => {
    expect(capOversizedRecord(signalRecord('bash'))).toBeNull();
  });

  it('a payload read from a record under the threshold with a long comm is capped too', () => {
    const bytes = signalRecord('y'.repeat(2000));
    expect(bytes.length).toBeLessThanOrEqual(MAX_HONEST_RECORD_BYTES);
    const p = payloadOfRecord(decodeRecord(bytes)) as { signal: { sender: { comm: string } } };
    expect(p.signal.sender.comm).toBe('y'.repeat(15));
    expect(JSON.stringify(p).length).toBeLessThan(400);
  });

  it('GuestLink stores the capped record and says so once for the VM', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vesper-caps-'));
    try {
      const pushed: VesperEvent[] = [];
      const warned: Array<[object, string]> = [];
      const log = {
        warn: (o: object, m: string) => warned.push([o, m]),
        info: () => undefined,
        error: () => undefined,
      } as unknown as Logger;
      const batcher = { push: (es: VesperEvent[]) => pushed.push(...es) } as unknown as IngestBatcher;
      const link = new GuestLink('vm-caps', join(dir, 'none.sock'), {
        key: loadOrCreateHostKey(join(dir, 'keys')),
        batcher,
        heldFor: () => 0,
        hostEvent: () => undefined,
        log,
      });
      const rec = (seq: number) =>
        new AgentRecord(seq, 1, 1e18, 1, 'signal', 0, 'signal', 'signal', signalRecord('z'.repeat(64 * 1024), seq), null);
      link.session.emit('batch', [rec(1), rec(2)], 'boot/1');
      link.session.emit('batch', [rec(3)], 'boot/1');
      link.stop();
      expect(pushed).toHaveLength(3);
      for (const e of pushed) {
        expect((e as RecordEvent).record.length).toBeLessThan(200);
        expect(JSON.stringify(e.payload)).not.toContain('z'.repeat(16));
      }
      const told = warned.filter(([, m]) => /capped before storing/.test(m));
      expect(told).toHaveLength(1);
      expect(told[0]![0]).toMatchObject({ vm: 'vm-caps' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
