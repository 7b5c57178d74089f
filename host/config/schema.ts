// The manager's configuration: what the YAML file may say (the zod schema, in the file's
// snake_case, with every default), and what the rest of the host gets (Config, camelCase,
// durations in ms and sizes in bytes). Checks that involve two keys at once (a filter's decision
// and its action, reconnect_min against reconnect_max) are in crossCheck(), which runs on the raw
// data so that they are reported even when some other key is wrong too.
import { z } from 'zod';
import {
  ACTION_NAMES,
  PACEMAKER_ATTRIBUTE_HINT,
  PACEMAKER_NODE_HINT,
  PACEMAKER_RESOURCE_HINT,
  actionProblemForVm,
  isLibvirtUri,
  isPacemakerAttribute,
  isPacemakerNode,
  isPacemakerResource,
  parseAction,
} from '../actions/parse.js';
import { DEFAULT_ALERT_SOCKET } from '../pacemaker/alert-event.js';
import { parseSshTarget } from '../ssh/target.js';
import { metricsSchema, type MetricsListen } from './metrics-config.js';
import { CONTROL, absolutePath, duration, mapping, oneOf, size, sizeOrZero, text, wholeNumber } from './fields.js';
import { parseDuration } from './units.js';
import { sinksSchema, toSinkConfig, type SinkConfig } from './sinks.js';

export type LogLevel = 'info' | 'debug' | 'warn' | 'error';
export type StoreSync = 'full' | 'normal';

/** What a filter rule decides; the same shape as the filter table's. */
export type FilterDecision = { kind: 'notify' } | { kind: 'discard' } | { kind: 'action'; action: string; args: string[] };

export interface FilterRuleConfig {
  /** a libvirt domain name, '' for the host, or '*' */
  vm: string;
  /** plugin name or '*' */
  plugin: string;
  instance: number | '*';
  /** event name or '*' */
  event: string;
  decision: FilterDecision;
}

export interface AttachProbeConfig {
  name: string;
  instances: number;
  /** parameter values as the agent takes them (strings) */
  params: Record<string, string>;
}

export interface AttachRuleConfig {
  /** a domain name or '*' */
  vm: string;
  probes: AttachProbeConfig[];
}

export interface PacemakerConfig {
  /** VM (libvirt domain name) → its Pacemaker resource and, optionally, node */
  vms: Record<string, { resource: string; node?: string }>;
  /** this host's Pacemaker node name; undefined: `crm_node -n` */
  node?: string;
  /** pacemaker-attr's default attribute */
  healthAttribute: string;
  /** ms one run of a Pacemaker tool may take */
  toolsTimeout: number;
  /** the socket Pacemaker's alert agent reports to (HostEvent requests only) */
  alertSocket: string;
  /** the group that may use it: Pacemaker's, whose user runs alert agents */
  alertGroup: string;
}

/** One VM reached over SSH: where, with what, and where its agent lives there. */
export interface SshTargetConfig {
  /** `user@host[:port]` as written (parseSshTarget reads it) */
  target: string;
  /** private key file; without key and passwordEnv, root's ~/.ssh keys and ssh-agent */
  key?: string;
  /** known_hosts to check the host key against (default ~/.ssh/known_hosts) */
  knownHosts?: string;
  /** a pinned `SHA256:…` host key fingerprint, checked instead of known_hosts */
  fingerprint?: string;
  /** the environment variable holding the password (never the password itself) */
  passwordEnv?: string;
  /** the agent's files on the target (AgentLayout.prefix) */
  prefix: string;
  /** the agent daemon's socket, pid file and log on the target (AgentLayout.runDir) */
  runDir: string;
}

export interface SshConfig {
  /** VM name → its target */
  targets: Record<string, SshTargetConfig>;
  /** ms for TCP connect, SSH handshake and authentication */
  connectTimeout: number;
  /** ms between SSH-level keepalives; the connection is dropped after keepaliveCountMax unanswered */
  keepalive: number;
  keepaliveCountMax: number;
}

export interface Config {
  daemon: { socket: string; group: string; logLevel: LogLevel };
  /** domains: which libvirt domains this manager watches (globs, `*` and `?`; default all) */
  libvirt: { uri: string; channel: string; domains: string[] };
  store: {
    path: string;
    sync: StoreSync;
    /**
     * maxAge in ms, maxSize in bytes; vmShare: the share of the store's events (0-1] one VM may
     * hold before size retention takes its oldest events ahead of everyone else's (1: oldest first)
     */
    retention: { maxAge: number; maxSize: number; vmShare: number };
  };
  /** all in ms */
  channel: {
    keepalive: number;
    reconnectMin: number;
    reconnectMax: number;
    /** one guest's ingest budget: records and bytes a second (0: no limit), burst in ms */
    ingest: { recordsPerS: number; bytesPerS: number; burst: number };
    /** ms a busy turn of reads is stretched to (read-pacer.ts); 0 never; absent, the default */
    readCoalesce?: number;
    /**
     * ms the agent is given, once the host lets a paused/saved/snapshotted/migrated domain run
     * again, to link and beat before heartbeat-lost can fire (host/daemon/host-pause.ts); absent, 10 s
     */
    resumeGrace?: number;
  };
  actions: {
    /** ms */
    execTimeout: number;
    /** at most `max` actions per VM per `per` ms */
    rateLimit: { max: number; per: number };
    fenceLockDir: string;
    /** failover's standby libvirt URI when a filter's action names none */
    standbyUri?: string;
    /** failover refuses unless libvirt's lock manager guards the VM's disks (docs/failures.md#failover) */
    requireLockManager: boolean;
  };
  filters: FilterRuleConfig[];
  /** probes to attach to matching VMs when they are first seen */
  attach: AttachRuleConfig[];
  /** present when the file has a pacemaker section: alerts are taken, mapped VMs get the plugin */
  pacemaker?: PacemakerConfig;
  /** VMs reached over SSH (no virtio channel needed); none by default */
  ssh: SshConfig;
  /** the Prometheus endpoint (metrics-config.ts) */
  metrics: { listen: MetricsListen };
  /** export sinks (host/config/sinks.ts, run by host/export/); none by default */
  sinks: SinkConfig[];
}

/** the longest channel.read_coalesce may be */
const MAX_READ_COALESCE_MS = 200;

// ------------------------------------------------------------------ the file

const filterSchema = mapping('a filter rule', {
  vm: z
    .string({ error: "must be a domain name, '' for the host, or '*'" })
    .refine((s) => !CONTROL.test(s), { error: 'must not contain control characters' })
    .prefault('*'),
  plugin: text("a plugin name (signal, oom, libvirt, ...) or '*'"),
  instance: z.union([z.literal('*'), wholeNumber('a whole number >= 0', 0)], { error: "must be '*' or a whole number >= 0" }).prefault('*'),
  event: text("an event name or '*'"),
  decision: oneOf(['notify', 'discard', 'action'] as const),
  action: z.string({ error: `must be an action name: ${ACTION_NAMES.join(', ')}` }).optional(),
  args: z.array(z.string({ error: 'must be a string (quote numbers)' }), { error: 'must be a list of strings' }).optional(),
});

function pacemakerName(what: string, test: (s: string) => boolean, hint: string) {
  return z.string({ error: `must be ${what}` }).refine(test, { error: `must be ${what} (${hint})` });
}

const pacemakerVmSchema = mapping("a VM's Pacemaker resource", {
  resource: pacemakerName('a Pacemaker resource id', isPacemakerResource, PACEMAKER_RESOURCE_HINT),
  node: pacemakerName('a Pacemaker node name', isPacemakerNode, PACEMAKER_NODE_HINT).optional(),
});

const pacemakerSchema = mapping('a mapping', {
  vms: z
    .record(
      z.string().refine((s) => s !== '' && s !== '*' && !CONTROL.test(s), { error: "must be a VM's libvirt domain name" }),
      pacemakerVmSchema,
      { error: 'must be a mapping of VM names to { resource, node }' },
    )
    .prefault({}),
  node: pacemakerName('a Pacemaker node name', isPacemakerNode, PACEMAKER_NODE_HINT).optional(),
  health_attribute: pacemakerName('a node attribute name', isPacemakerAttribute, PACEMAKER_ATTRIBUTE_HINT).prefault('vesper-health'),
  tools_timeout: duration('10s'),
  alert_socket: absolutePath("the alert agent's socket path").prefault(DEFAULT_ALERT_SOCKET),
  alert_group: text('a group name').prefault('haclient'),
});

const sshTargetSchema = mapping('an SSH target', {
  target: z.string({ error: 'must be an SSH target user@host[:port]' }).refine(
    (s) => {
      try {
        parseSshTarget(s);
        return !CONTROL.test(s);
      } catch {
        return false;
      }
    },
    { error: 'must be an SSH target user@host[:port] (port 1-65535)' },
  ),
  key: absolutePath('the private key file').optional(),
  known_hosts: absolutePath('a known_hosts file').optional(),
  fingerprint: z
    .string({ error: 'must be a host key fingerprint SHA256:… (as ssh-keygen -lf prints it)' })
    .refine((s) => /^SHA256:[A-Za-z0-9+/]{43}=?$/.test(s), {
      error: 'must be a host key fingerprint SHA256:… (as ssh-keygen -lf prints it: 43 base64 characters)',
    })
    .optional(),
  // Refused in crossCheck, which never repeats the value: a password must not be in the file.
  password: z.unknown().optional(),
  password_env: z
    .string({ error: 'must be an environment variable name' })
    .refine((s) => /^[A-Za-z_][A-Za-z0-9_]*$/.test(s), { error: 'must be an environment variable name (letters, digits, _)' })
    .optional(),
  prefix: absolutePath("the agent's directory on the target").prefault('/opt/vesper-agent'),
  run_dir: absolutePath("the agent's run directory on the target").prefault('/run/vesper-agent'),
});

const sshSchema = mapping('a mapping', {
  targets: z
    .record(
      z.string().refine((s) => /^[A-Za-z0-9_.+-][A-Za-z0-9_.+:-]*$/.test(s) && s !== '*', {
        error: 'must be a VM name (letters, digits and . _ + - :)',
      }),
      sshTargetSchema,
      { error: 'must be a mapping of VM names to { target, key, known_hosts, fingerprint, ... }' },
    )
    .prefault({}),
  connect_timeout: duration('15s', 100),
  keepalive: duration('5s', 100),
  keepalive_count_max: wholeNumber('a whole number >= 1', 1).prefault(3),
});

const paramValue = z.union([z.string(), z.number(), z.boolean()], { error: 'must be a string, number or boolean' });

const probeSchema = mapping('a probe', {
  name: text('a probe name'),
  instances: wholeNumber('a whole number >= 1', 1).prefault(1),
  params: z.record(z.string(), paramValue, { error: 'must be a mapping of parameter names to values' }).prefault({}),
});

const attachSchema = mapping('an attach rule', {
  vm: text("a domain name or '*'"),
  probes: z.array(probeSchema, { error: 'must be a list of probes' }),
});

export const fileSchema = mapping('a mapping of sections', {
  daemon: mapping('a mapping', {
    socket: absolutePath('the API socket path').prefault('/run/vesper/vesperd.sock'),
    group: text('a group name').prefault('vesper'),
    log_level: oneOf(['info', 'debug', 'warn', 'error'] as const).prefault('info'),
  }).prefault({}),
  libvirt: mapping('a mapping', {
    uri: z
      .string({ error: 'must be a libvirt URI like qemu:///system' })
      .refine(isLibvirtUri, { error: 'must be a libvirt URI like qemu:///system' })
      .prefault('qemu:///system'),
    channel: text('a virtio-serial port name').prefault('org.vesper.agent.0'),
    domains: z.array(text('a domain name or glob'), { error: 'must be a list of domain names or globs' }).prefault(['*']),
  }).prefault({}),
  store: mapping('a mapping', {
    path: absolutePath('the event database file').prefault('/var/lib/vesper/events.db'),
    sync: oneOf(['full', 'normal'] as const).prefault('full'),
    retention: mapping('a mapping', {
      max_age: duration('30d'),
      max_size: size('1GiB'),
      max_vm_share: z
        .number({ error: 'must be a number above 0 and at most 1 (a share of the store, e.g. 0.5)' })
        .gt(0, { error: 'must be a number above 0 and at most 1 (a share of the store, e.g. 0.5)' })
        .lte(1, { error: 'must be a number above 0 and at most 1 (a share of the store, e.g. 0.5)' })
        .prefault(0.5),
    }).prefault({}),
  }).prefault({}),
  channel: mapping('a mapping', {
    keepalive: duration('1s'),
    reconnect_min: duration('200ms'),
    reconnect_max: duration('10s'),
    // After the host paused, saved, snapshotted or migrated the domain: how long the agent has to
    // link and beat again before detection counts silence as a fault (host/daemon/host-pause.ts).
    resume_grace: duration('10s', 0),
    // With many busy guests, reads are gathered for up to this long (host/channel/read-pacer.ts).
    read_coalesce: duration('20ms', 0).refine((ms) => ms <= MAX_READ_COALESCE_MS, {
      error: `must be at most ${MAX_READ_COALESCE_MS}ms: it is added to the latency of every event under load`,
    }),
    // How fast one guest's link is read at most; past it the link is paused (the guest's ring
    // holds its records), so that one guest cannot keep vesperd's one thread to itself.
    ingest: mapping('a mapping', {
      records_per_s: z
        .number({ error: 'must be a whole number >= 1000, or 0 for no limit' })
        .int({ error: 'must be a whole number >= 1000, or 0 for no limit' })
        .refine((n) => n === 0 || n >= 1000, { error: 'must be a whole number >= 1000, or 0 for no limit' })
        .prefault(100_000),
      // at least one largest frame (1 MiB) a second: a guest must be able to send any frame it may
      bytes_per_s: sizeOrZero('32MiB', 1 << 20, '1MiB'),
      burst: duration('1s'),
    }).prefault({}),
  }).prefault({}),
  actions: mapping('a mapping', {
    exec_timeout: duration('30s'),
    rate_limit: mapping('a mapping', {
      max: wholeNumber('a whole number >= 1', 1).prefault(3),
      per: duration('10m'),
    }).prefault({}),
    fence_lock_dir: absolutePath('the fence lock directory').prefault('/var/lib/vesper/fence'),
    standby_uri: z
      .string({ error: 'must be a libvirt URI like qemu+ssh://standby/system' })
      .refine(isLibvirtUri, { error: 'must be a libvirt URI like qemu+ssh://standby/system' })
      .optional(),
    require_lock_manager: z.boolean({ error: 'must be true or false' }).prefault(true),
  }).prefault({}),
  filters: z.array(filterSchema, { error: 'must be a list of filter rules' }).prefault([]),
  attach: z.array(attachSchema, { error: 'must be a list of attach rules' }).prefault([]),
  pacemaker: pacemakerSchema.optional(),
  ssh: sshSchema.prefault({}),
  metrics: metricsSchema,
  sinks: sinksSchema,
});

export type FileConfig = z.output<typeof fileSchema>;

/** The file's (snake_case) form as the rest of the host wants it. */
export function toConfig(f: FileConfig): Config {
  return {
    daemon: { socket: f.daemon.socket, group: f.daemon.group, logLevel: f.daemon.log_level },
    libvirt: { uri: f.libvirt.uri, channel: f.libvirt.channel, domains: f.libvirt.domains },
    store: {
      path: f.store.path,
      sync: f.store.sync,
      retention: { maxAge: f.store.retention.max_age, maxSize: f.store.retention.max_size, vmShare: f.store.retention.max_vm_share },
    },
    channel: {
      keepalive: f.channel.keepalive,
      reconnectMin: f.channel.reconnect_min,
      reconnectMax: f.channel.reconnect_max,
      ingest: { recordsPerS: f.channel.ingest.records_per_s, bytesPerS: f.channel.ingest.bytes_per_s, burst: f.channel.ingest.burst },
      readCoalesce: f.channel.read_coalesce,
      resumeGrace: f.channel.resume_grace,
    },
    actions: {
      execTimeout: f.actions.exec_timeout,
      rateLimit: { max: f.actions.rate_limit.max, per: f.actions.rate_limit.per },
      fenceLockDir: f.actions.fence_lock_dir,
      ...(f.actions.standby_uri !== undefined ? { standbyUri: f.actions.standby_uri } : {}),
      requireLockManager: f.actions.require_lock_manager,
    },
    filters: f.filters.map((r) => ({
      vm: r.vm,
      plugin: r.plugin,
      instance: r.instance,
      event: r.event,
      decision: r.decision === 'action' ? { kind: 'action' as const, action: r.action ?? '', args: r.args ?? [] } : { kind: r.decision },
    })),
    attach: f.attach.map((a) => ({
      vm: a.vm,
      probes: a.probes.map((p) => ({
        name: p.name,
        instances: p.instances,
        params: Object.fromEntries(Object.entries(p.params).map(([k, v]) => [k, String(v)])),
      })),
    })),
    ...(f.pacemaker ? { pacemaker: toPacemakerConfig(f.pacemaker) } : {}),
    ssh: toSshConfig(f.ssh),
    metrics: { listen: f.metrics.listen },
    sinks: f.sinks.map(toSinkConfig),
  };
}

function toSshConfig(s: FileConfig['ssh']): SshConfig {
  return {
    targets: Object.fromEntries(
      Object.entries(s.targets).map(([vm, t]) => [
        vm,
        {
          target: t.target,
          ...(t.key !== undefined ? { key: t.key } : {}),
          ...(t.known_hosts !== undefined ? { knownHosts: t.known_hosts } : {}),
          ...(t.fingerprint !== undefined ? { fingerprint: t.fingerprint } : {}),
          ...(t.password_env !== undefined ? { passwordEnv: t.password_env } : {}),
          prefix: t.prefix,
          runDir: t.run_dir,
        },
      ]),
    ),
    connectTimeout: s.connect_timeout,
    keepalive: s.keepalive,
    keepaliveCountMax: s.keepalive_count_max,
  };
}

function toPacemakerConfig(p: NonNullable<FileConfig['pacemaker']>): PacemakerConfig {
  return {
    vms: Object.fromEntries(
      Object.entries(p.vms).map(([vm, m]) => [vm, { resource: m.resource, ...(m.node !== undefined ? { node: m.node } : {}) }]),
    ),
    ...(p.node !== undefined ? { node: p.node } : {}),
    healthAttribute: p.health_attribute,
    toolsTimeout: p.tools_timeout,
    alertSocket: p.alert_socket,
    alertGroup: p.alert_group,
  };
}

/** Every default: what an empty (or missing default) file gives. */
export function defaultConfig(): Config {
  return toConfig(fileSchema.parse({}));
}

// ------------------------------------------------------------------ checks across keys

export interface Problem {
  /** where, in the file's keys and list indexes */
  path: (string | number)[];
  message: string;
  /** point at the key itself rather than its value (unknown keys) */
  atKey?: boolean;
}

const isObj = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** Mistakes that need two keys to see, found on the raw file data (whatever else is wrong). */
export function crossCheck(raw: unknown, suggest: (word: string, choices: readonly string[]) => string | null): Problem[] {
  const out: Problem[] = [];
  if (!isObj(raw)) return out;
  const actions = isObj(raw.actions) ? raw.actions : {};
  const defaultStandby = typeof actions.standby_uri === 'string';
  const pcmk = isObj(raw.pacemaker) ? raw.pacemaker : {};
  const pcmkVms = isObj(pcmk.vms) ? pcmk.vms : {};
  // An alert names a resource, and the resource's VM gets the event: one VM per resource.
  const owner = new Map<string, string>();
  for (const [vm, m] of Object.entries(pcmkVms)) {
    if (!isObj(m) || typeof m.resource !== 'string') continue;
    const first = owner.get(m.resource);
    if (first !== undefined)
      out.push({
        path: ['pacemaker', 'vms', vm, 'resource'],
        message: `resource ${m.resource} is already ${first}'s; a resource belongs to one VM (its alerts become that VM's events)`,
      });
    else owner.set(m.resource, vm);
  }
  const mapped = (vm: string): boolean => Object.hasOwn(pcmkVms, vm);
  const filters = Array.isArray(raw.filters) ? raw.filters : [];
  filters.forEach((f: unknown, i) => {
    if (!isObj(f)) return;
    const at = (key: string): (string | number)[] => ['filters', i, key];
    if (f.decision !== 'action') {
      if (f.decision === 'notify' || f.decision === 'discard')
        for (const key of ['action', 'args'] as const)
          if (f[key] !== undefined)
            out.push({ path: at(key), message: `only goes with decision: action (this rule's decision is ${f.decision})` });
      return;
    }
    if (f.action === undefined) {
      out.push({ path: at('action'), message: `missing: decision: action needs an action (${ACTION_NAMES.join(', ')})` });
      return;
    }
    if (typeof f.action !== 'string') return; // the schema says so
    const args = f.args === undefined ? [] : f.args;
    if (!Array.isArray(args) || !args.every((a) => typeof a === 'string')) return; // the schema says so
    if (!(ACTION_NAMES as readonly string[]).includes(f.action)) {
      const near = suggest(f.action, ACTION_NAMES);
      out.push({
        path: at('action'),
        message: `unknown action ${JSON.stringify(f.action)}${near ? ` (did you mean "${near}"?)` : ''}; allowed: ${ACTION_NAMES.join(', ')}`,
      });
      return;
    }
    let parsed;
    try {
      parsed = parseAction(f.action, args);
    } catch (err) {
      out.push({ path: f.args === undefined ? at('action') : at('args'), message: (err as Error).message });
      return;
    }
    if (parsed.kind === 'failover' && parsed.standbyUri === undefined && !defaultStandby)
      out.push({
        path: f.args === undefined ? at('action') : at('args'),
        message: 'failover needs a standby: --standby-uri URI in args, or actions.standby_uri',
      });
    const vmProblem = actionProblemForVm(parsed, typeof f.vm === 'string' ? f.vm : '*', mapped);
    if (vmProblem) out.push({ path: f.vm === '' ? at('vm') : f.args === undefined ? at('action') : at('args'), message: vmProblem });
  });
  const ssh = isObj(raw.ssh) ? raw.ssh : {};
  const targets = isObj(ssh.targets) ? ssh.targets : {};
  for (const [vm, t] of Object.entries(targets))
    if (isObj(t) && t.password !== undefined)
      out.push({
        path: ['ssh', 'targets', vm, 'password'],
        atKey: true,
        message: 'a password does not belong in the config file: put it in an environment variable and name that in password_env',
      });
  const ch = isObj(raw.channel) ? raw.channel : {};
  const min = durationOr(ch.reconnect_min, 200);
  const max = durationOr(ch.reconnect_max, 10_000);
  if (min !== null && max !== null && min > max)
    out.push({
      path: ch.reconnect_min !== undefined ? ['channel', 'reconnect_min'] : ['channel', 'reconnect_max'],
      message: `reconnect_min (${min} ms) must not be longer than reconnect_max (${max} ms)`,
    });
  return out;
}

function durationOr(v: unknown, def: number): number | null {
  if (v === undefined) return def;
  if (typeof v !== 'string') return null;
  try {
    return parseDuration(v);
  } catch {
    return null;
  }
}
