// The split-brain judge (test/helpers/split-brain.ts) must catch what it is there to catch.
import { describe, expect, it } from 'vitest';
import type { LibvirtEvent } from '../../host/libvirt/events.js';
import { judge } from '../helpers/split-brain.js';

let ms = 0;
const ev = (domain: string, event: string): LibvirtEvent => ({
  kind: 'lifecycle',
  name: 'lifecycle',
  domain,
  event,
  at: new Date(1_700_000_000_000 + (ms += 10)),
  raw: '',
});

describe('split-brain judge', () => {
  it('accepts fence, then one start', () => {
    const t = judge([ev('p', 'Suspended'), ev('p', 'Stopped'), ev('s', 'Started')], 'p', 's');
    expect(t).toMatchObject({ doubleStart: false, startBeforeFence: false, standbyStarts: 1 });
    expect(t.failoverMs).toBe(20);
  });
  it('catches a start while the paused primary is still there', () => {
    const t = judge([ev('p', 'Suspended'), ev('s', 'Started'), ev('p', 'Stopped')], 'p', 's');
    expect(t).toMatchObject({ doubleStart: true, startBeforeFence: true });
  });
  it('catches a second start of the standby', () => {
    const t = judge([ev('p', 'Suspended'), ev('p', 'Stopped'), ev('s', 'Started'), ev('s', 'Started')], 'p', 's');
    expect(t).toMatchObject({ doubleStart: true, standbyStarts: 2 });
  });
  it('allows a restart of the standby after it stopped', () => {
    const t = judge([ev('p', 'Stopped'), ev('s', 'Started'), ev('s', 'Stopped'), ev('s', 'Started')], 'p', 's');
    expect(t).toMatchObject({ doubleStart: false, standbyStarts: 2 });
  });
});
