// What the daemon remembers across restarts besides events: which probes it attached to which
// VM (to attach them again), the filter rules it was given, and a few key/value facts (meta).
// They live in the same file as the events so that one path is all the daemon's state.

import type Database from 'better-sqlite3';

export interface AttachmentSpec {
  instances: number;
  params: Record<string, string>;
  /** when it was attached; default now */
  attachedAtMs?: number;
}

export interface Attachment {
  vm: string;
  probe: string;
  instances: number;
  params: Record<string, string>;
  attachedAtMs: number;
}

/**
 * A filter rule's key as saved: all text, '*' in any field means "any". The live rules are
 * notify/filter.ts's FilterRule; the daemon saves each whole as the decision.
 */
export interface SavedFilterKey {
  vm: string;
  plugin: string;
  instance: string;
  event: string;
}

export interface SavedFilterRule extends SavedFilterKey {
  /** opaque to the store: whatever the filter framework decides for matching events, as JSON */
  decision: unknown;
}

interface AttachmentRow {
  vm: string;
  probe: string;
  instances: number;
  params: string;
  attached_at: number;
}

interface FilterRow {
  vm: string;
  plugin: string;
  instance: string;
  event: string;
  decision: string;
}

export class AttachmentTable {
  private readonly upsert: Database.Statement<[string, string, number, string, number]>;
  private readonly remove: Database.Statement<[string, string]>;
  private readonly listAll: Database.Statement<[], AttachmentRow>;
  private readonly listVm: Database.Statement<[string], AttachmentRow>;

  constructor(db: Database.Database) {
    this.upsert = db.prepare(
      `INSERT INTO attachments (vm, probe, instances, params, attached_at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (vm, probe) DO UPDATE SET instances = excluded.instances, params = excluded.params, attached_at = excluded.attached_at`,
    );
    this.remove = db.prepare('DELETE FROM attachments WHERE vm = ? AND probe = ?');
    this.listAll = db.prepare('SELECT vm, probe, instances, params, attached_at FROM attachments ORDER BY vm, probe');
    this.listVm = db.prepare('SELECT vm, probe, instances, params, attached_at FROM attachments WHERE vm = ? ORDER BY probe');
  }

  save(vm: string, probe: string, spec: AttachmentSpec): void {
    this.upsert.run(vm, probe, spec.instances, JSON.stringify(spec.params), spec.attachedAtMs ?? Date.now());
  }

  /** true if there was one */
  delete(vm: string, probe: string): boolean {
    return this.remove.run(vm, probe).changes > 0;
  }

  list(vm?: string): Attachment[] {
    const rows = vm === undefined ? this.listAll.all() : this.listVm.all(vm);
    return rows.map((r) => ({
      vm: r.vm,
      probe: r.probe,
      instances: r.instances,
      params: JSON.parse(r.params) as Record<string, string>,
      attachedAtMs: r.attached_at,
    }));
  }
}

/** The saved filter rules, restored into notify/filter.ts's FilterTable at start. */
export class SavedFilterTable {
  private readonly upsert: Database.Statement<[string, string, string, string, string]>;
  private readonly remove: Database.Statement<[string, string, string, string]>;
  private readonly removeAll: Database.Statement<[]>;
  private readonly listAll: Database.Statement<[], FilterRow>;

  constructor(db: Database.Database) {
    // DO UPDATE keeps the row's rowid, so a rule changed in place keeps its place in list().
    this.upsert = db.prepare(
      `INSERT INTO filters (vm, plugin, instance, event, decision) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (vm, plugin, instance, event) DO UPDATE SET decision = excluded.decision`,
    );
    this.remove = db.prepare('DELETE FROM filters WHERE vm = ? AND plugin = ? AND instance = ? AND event = ?');
    this.removeAll = db.prepare('DELETE FROM filters');
    this.listAll = db.prepare('SELECT vm, plugin, instance, event, decision FROM filters ORDER BY rowid');
  }

  save(rule: SavedFilterRule): void {
    // undefined has no JSON form; a rule without a decision is stored as null
    this.upsert.run(rule.vm, rule.plugin, rule.instance, rule.event, JSON.stringify(rule.decision ?? null));
  }

  /** true if there was one */
  delete(key: SavedFilterKey): boolean {
    return this.remove.run(key.vm, key.plugin, key.instance, key.event).changes > 0;
  }

  /** number of rules removed */
  clear(): number {
    return this.removeAll.run().changes;
  }

  /** in the order the rules were first saved */
  list(): SavedFilterRule[] {
    return this.listAll.all().map((r) => ({
      vm: r.vm,
      plugin: r.plugin,
      instance: r.instance,
      event: r.event,
      decision: JSON.parse(r.decision) as unknown,
    }));
  }
}

export class MetaTable {
  private readonly select: Database.Statement<[string], string>;
  private readonly upsert: Database.Statement<[string, string]>;

  constructor(db: Database.Database) {
    this.select = db.prepare<[string], string>('SELECT value FROM meta WHERE key = ?').pluck();
    this.upsert = db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value');
  }

  get(key: string): string | undefined {
    return this.select.get(key);
  }

  set(key: string, value: string): void {
    this.upsert.run(key, value);
  }
}
