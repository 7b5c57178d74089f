// `vesper analyze -o text`: verdicts first, each with the evidence lines it rests on, then the
// timeline, then how the guest clocks were put on the host's.
import type { Analysis, TimelineEntry } from './types.js';

function day(us: number): string {
  return new Date(us / 1000).toISOString().slice(0, 10);
}

/** Time of day on the host clock, to the millisecond (UTC, as `vesper events` prints). */
function tod(us: number): string {
  return new Date(us / 1000).toISOString().slice(11, 23);
}

function line(e: TimelineEntry): string {
  return `${tod(e.timeUs)}  #${String(e.id).padEnd(8)} ${`${e.plugin}/${e.event}`.padEnd(24)} ${e.description}`;
}

function ms(us: number): string {
  return `${(us / 1000).toFixed(3)} ms`;
}

export function analysisText(a: Analysis): string {
  const out: string[] = [];
  const byId = new Map(a.timeline.map((e) => [e.id, e]));
  const how =
    a.anchor.mode === 'last'
      ? `around the last failure-like event (#${a.anchor.eventId ?? '?'})`
      : `around ${day(a.anchor.atUs)} ${tod(a.anchor.atUs)}${a.anchor.eventId !== null ? ` (nearest failure-like event #${a.anchor.eventId})` : ''}`;
  out.push(
    `VM ${a.vm}: ${day(a.window.fromUs)} ${tod(a.window.fromUs)} to ${day(a.window.toUs) === day(a.window.fromUs) ? '' : `${day(a.window.toUs)} `}` +
      `${tod(a.window.toUs)} UTC, host clock; ${a.eventCount} event${a.eventCount === 1 ? '' : 's'}, ${how}`,
  );
  if (a.truncated) out.push(`(the window held more events than one analysis reads: its earliest were left out)`);
  out.push('', 'VERDICTS');
  if (!a.verdicts.length) out.push('  none: nothing in this window looks like a failure');
  a.verdicts.forEach((v, i) => {
    out.push(`${i + 1}. ${v.kind} (${v.scope}, ${v.confidence})`);
    out.push(`   ${v.summary}`);
    out.push('   evidence:');
    for (const id of v.evidence) {
      const e = byId.get(id);
      out.push(`     ${e ? line(e) : `#${id} (not in the timeline)`}`);
    }
  });
  out.push('', 'TIMELINE (host clock; guest events put on it per agent run, see CLOCKS; * evidence)');
  for (const e of a.timeline) out.push(`${e.evidence ? '*' : ' '} ${line(e)}`);
  if (a.omitted?.heartbeats) out.push(`  (${a.omitted.heartbeats} routine heartbeats not shown: only those at the edges of a gap are)`);
  if (a.omitted?.distant) out.push(`  (${a.omitted.distant} events farthest from the failure not shown: a busy window)`);
  out.push('', 'CLOCKS');
  if (!a.clocks.runs.length) out.push('  no guest records in the window: every time is the host clock');
  for (const r of a.clocks.runs)
    out.push(
      `  agent run ${r.agentRun}: guest time ${r.offsetUs < 0 ? '-' : '+'} ${ms(Math.abs(r.offsetUs))} = host time ` +
        `(from ${r.records} record${r.records === 1 ? '' : 's'}, spread ${ms(r.spreadUs)})`,
    );
  out.push(`  ${a.clocks.note}`);
  return `${out.join('\n')}\n`;
}
