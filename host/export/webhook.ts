// webhook sink: each batch is one HTTP POST of JSON {"host", "events": [...]} (events carry
// their eventId for de-duplication); a 2xx reply is delivery, anything else or no reply in time
// is retried by the framework.
import type { ExportEvent, ExportSink } from './sink.js';

export interface WebhookParams {
  url: string;
  headers: Record<string, string>;
}

export class WebhookSink implements ExportSink {
  readonly kind = 'webhook';

  constructor(
    readonly name: string,
    readonly config: WebhookParams,
    private readonly host: string,
  ) {}

  async deliver(batch: readonly ExportEvent[], signal: AbortSignal): Promise<void> {
    const body = JSON.stringify({ host: this.host, events: batch });
    const res = await fetch(this.config.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...this.config.headers },
      body,
      signal,
    });
    // the body is read (and dropped) so that the connection goes back to the pool
    const text = await res.text().catch(() => '');
    if (!res.ok) throw new Error(`${this.config.url} answered ${res.status} ${res.statusText}${text ? `: ${text.slice(0, 200)}` : ''}`);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
