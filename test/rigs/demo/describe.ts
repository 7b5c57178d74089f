import type { AgentRecord } from '../../../proto/record.js';

/** One line a person can read for a record. */
export function describeRecord(r: AgentRecord): string {
  const p = r.raw;
  switch (r.kind) {
    case 'signal': {
      const s = p.signal!;
      const from = s.senderIsKernel
        ? `the kernel (si_code ${s.code}, while ${s.sender?.comm}[${s.sender?.pid}] ran)`
        : `${s.sender?.comm}[${s.sender?.pid}]`;
      return `signal ${s.sig} to ${s.target?.comm}[${s.target?.pid}] from ${from}`;
    }
    case 'exec':
      return `${p.exec?.task?.comm}[${p.exec?.task?.pid}] exec ${p.exec?.filename}`;
    case 'exit': {
      const e = p.exit!;
      const how = e.signal ? `killed by signal ${e.signal}` : e.codeKnown ? `exit code ${e.exitCode}` : 'ended (cause not seen)';
      return `${e.task?.comm}[${e.task?.pid}] ${how}`;
    }
    case 'oom': {
      const o = p.oom!;
      return `OOM killer chose ${o.victim?.comm}[${o.victim?.pid}] anon-rss ${o.anonRssKb} kB in ${o.memcg || '(cgroup not reported)'}`;
    }
    case 'loss':
      return `LOST ${p.loss?.count} records (${p.loss?.source})`;
    default:
      return r.kind;
  }
}
