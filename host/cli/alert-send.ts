// Sending one Pacemaker alert to vesperd: what `vesper alert-pacemaker` does, and what the
// alert agent runs through the small bundle dist/host/vesper-alert.mjs (alert-main.ts).
//
// Pacemaker starts every alert agent of an event at once, as separate processes, while it
// recovers the resource (Red Hat's "Writing an alert agent": "a significant load burst may
// occur"); under load a Node process that loads the whole CLI (every package it uses, about
// 3–5 s on a loaded 2-core machine) spent most of the agent's old 6 s bound before it even
// connected, and was killed with the alert unsent. This path loads only what an alert needs.
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { ApiClient } from './api-client.js';
import { alertEvent, type AlertEnv } from '../pacemaker/alert-event.js';

export interface SendAlertOptions {
  env: AlertEnv;
  socket: string;
  /** the whole exchange, connecting included */
  timeoutMs: number;
}

/** Sends the alert in env to vesperd; its answer ("PLUGIN EVENT for VM") once it is stored. */
export async function sendAlert(o: SendAlertOptions): Promise<string> {
  const { event, payload } = alertEvent(o.env);
  const started = Date.now();
  const c = await ApiClient.connect(o.socket, o.timeoutMs);
  let timer: NodeJS.Timeout | undefined;
  try {
    const r = await Promise.race([
      c.request({ hostEvent: { plugin: 'pacemaker', vm: '', event, payloadJson: JSON.stringify(payload) } }),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new VesperError(ErrorCode.REQUEST_TIMEOUT, `vesperd did not take the alert within ${o.timeoutMs} ms`)),
          Math.max(1, o.timeoutMs - (Date.now() - started)),
        );
      }),
    ]);
    return r.ok?.message ?? 'sent';
  } finally {
    clearTimeout(timer);
    c.close();
  }
}
