// One agent on this machine for a whole describe block: started before, stopped after
// (also when a test fails), with every record it sent collected in order.
import { afterAll, beforeAll } from 'vitest';
import type { AgentClient } from '../../host/channel/agent-client.js';
import type { AgentRecord } from '../../proto/record.js';
import { LocalAgent, type LocalAgentOptions } from '../../host/channel/local-agent.js';

export interface AgentFixture {
  agent: LocalAgent;
  client: AgentClient;
  records: AgentRecord[];
}

export function useLocalAgent(opts: LocalAgentOptions = {}): AgentFixture {
  const f = { records: [] as AgentRecord[] } as AgentFixture;
  beforeAll(async () => {
    f.agent = new LocalAgent(opts);
    await f.agent.start();
    f.client = await f.agent.connect();
    f.client.on('record', (r) => f.records.push(r));
  });
  afterAll(async () => {
    f.client?.close();
    await f.agent?.stop();
  });
  return f;
}

/** The manifest of a one-event test probe (a heartbeat-shaped `beat`), for modules a test writes. */
export function testProbeManifest(name: string): Buffer {
  return Buffer.from(
    JSON.stringify({
      name,
      version: '1.0.0',
      agent: '>=0.1.0 <1.0.0',
      description: 'test probe',
      maxInstances: 1,
      events: [{ id: 1, name: 'beat', payload: 'heartbeat', description: '' }],
      params: [],
    }),
  );
}
