// The test guest as a Pacemaker resource, the way people run VMs under Pacemaker today
// (ocf:heartbeat:VirtualDomain, a 10 s monitor with a monitor script that checks the guest's
// demo service), with vesperd beside it: vesperd watches the guest, can tell Pacemaker
// (pacemaker-fail, pacemaker-attr), and hears Pacemaker's alerts back through vesper's alert
// agent. Real Corosync, Pacemaker, libvirtd, guest and vesperd; for the Pacemaker acceptance
// test and the race benchmark.
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { PacemakerRig, RIG_LOG_DIR } from '../rigs/pacemaker/rig.js';
import { virtualDomainPrimitiveXml, writeVirtualDomainFiles } from '../rigs/pacemaker/virtual-domain.js';
import { VmRig } from '../rigs/vm/rig.js';
import { readableCliCopy, type CliCopy } from './cli-copy.js';
import { VesperdProcess, writeVesperdConfig, type EventLine } from './vesperd-process.js';
import { waitFor } from './wait.js';

export const NODE = 'node1';

export interface PacemakerVmOptions {
  onProgress?: (line: string) => void;
  /** monitor interval of the VirtualDomain resource (default 10 s, as commonly configured) */
  monitorIntervalS?: number;
}

export class PacemakerVm {
  pcmk!: PacemakerRig;
  rig!: VmRig;
  vesperd!: VesperdProcess;
  readonly dir: string;
  readonly resource: string;
  /** the alert agent's own record, one line per alert (VESPER_ALERT_LOG), for diagnose() */
  readonly alertLog: string;
  /** every event vesperd stores, as `vesper events -f -o json` prints it, from the start */
  events: EventLine[] = [];
  private stopFollow: (() => void) | null = null;
  /** the alert agent and its sender where hacluster can read them, wherever the checkout lies */
  private alertCopy: CliCopy | null = null;
  private readonly say: (line: string) => void;

  private constructor(private readonly o: PacemakerVmOptions) {
    this.say = o.onProgress ?? (() => undefined);
    this.dir = mkdtempSync('/tmp/vesper-pcmk-vm-');
    // hacluster runs the alert agent: it must reach the alert socket below.
    chmodSync(this.dir, 0o755);
    this.resource = 'vm-guest';
    // hacluster writes it
    this.alertLog = join(this.dir, 'alerts.log');
    writeFileSync(this.alertLog, '');
    chmodSync(this.alertLog, 0o666);
  }

  /**
   * Pacemaker (one node), the guest image, vesperd with a pacemaker section, vesper's alert
   * agent registered, and the guest started by Pacemaker (not by the rig: VirtualDomain creates
   * the domain itself). On failure everything started so far is stopped again.
   */
  static async start(o: PacemakerVmOptions = {}): Promise<PacemakerVm> {
    const s = new PacemakerVm(o);
    try {
      await s.setUp();
      return s;
    } catch (err) {
      await s.stop();
      throw err;
    }
  }

  private async setUp(): Promise<void> {
    this.say('pacemaker: starting one node');
    this.pcmk = await PacemakerRig.start({ nodes: 1, onProgress: (l) => this.say(`pacemaker: ${l}`) });
    this.rig = new VmRig({ testHelpers: true, onProgress: (s, d) => this.say(`vm rig: ${s}${d ? `: ${d}` : ''}`) });
    await this.rig.prepare();
    const files = writeVirtualDomainFiles(this.rig, join(this.dir, 'domain'));

    const socket = join(this.dir, 'run', 'vesperd.sock');
    const alertSocket = join(this.dir, 'alert', 'alert.sock');
    mkdirSync(join(this.dir, 'fence'));
    const configPath = writeVesperdConfig(join(this.dir, 'vesper.yaml'), {
      socket,
      store: join(this.dir, 'events.db'),
      domains: [this.rig.name],
      fenceLockDir: join(this.dir, 'fence'),
      more: {
        actions: { rate_limit: { max: 30, per: '10m' } },
        pacemaker: {
          node: NODE,
          vms: { [this.rig.name]: { resource: this.resource, node: NODE } },
          alert_socket: alertSocket,
          alert_group: 'haclient',
        },
      },
    });
    this.vesperd = new VesperdProcess(configPath, socket);
    this.say('vesperd: starting');
    await this.vesperd.start();
    const f = this.vesperd.follow();
    this.events = f.lines;
    this.stopFollow = f.stop;

    // Pacemaker's default alert timeout (30 s): the agent's own bound, VESPER_ALERT_TIMEOUT
    // (20 s by default), stays below it, so that on a loaded machine an alert is late, not lost.
    this.say('pacemaker: registering vesper alert agent');
    this.alertCopy = readableCliCopy();
    await this.pcmk.check(NODE, 'cibadmin', [
      '--create',
      '--scope',
      'configuration',
      '--xml-text',
      `<alerts><alert id="vesper" path="${this.alertCopy.alertAgent}">` +
        '<meta_attributes id="vesper-meta">' +
        '<nvpair id="vesper-meta-ts" name="timestamp-format" value="%Y-%m-%d %H:%M:%S.%06N"/>' +
        '<nvpair id="vesper-meta-timeout" name="timeout" value="30s"/></meta_attributes>' +
        '<instance_attributes id="vesper-attrs">' +
        `<nvpair id="vesper-attrs-socket" name="VESPER_SOCKET" value="${alertSocket}"/>` +
        `<nvpair id="vesper-attrs-node" name="VESPER_NODE" value="${process.execPath}"/>` +
        `<nvpair id="vesper-attrs-log" name="VESPER_ALERT_LOG" value="${this.alertLog}"/>` +
        '</instance_attributes></alert></alerts>',
    ]);

    this.say(`pacemaker: creating ${this.resource} (VirtualDomain, monitor every ${this.o.monitorIntervalS ?? 10} s)`);
    await this.pcmk.createPrimitive(
      virtualDomainPrimitiveXml({
        id: this.resource,
        configXml: files.configXml,
        monitorScript: files.monitorScript,
        monitorIntervalS: this.o.monitorIntervalS ?? 10,
      }),
    );
    await this.waitRunning(240_000);
    this.say('vesperd: waiting for the link to the guest agent');
    await this.waitLinked(120_000);
  }

  /** The resource runs (its start includes the guest's boot and the demo service answering). */
  async waitRunning(timeoutMs: number): Promise<void> {
    await this.waitForPacemaker(
      `${this.resource} running`,
      async () => (await this.pcmk.resourceState(this.resource)).running,
      timeoutMs,
      250,
    );
  }

  async waitStopped(timeoutMs: number): Promise<void> {
    await this.waitForPacemaker(
      `${this.resource} stopped`,
      async () => !(await this.pcmk.resourceState(this.resource)).running,
      timeoutMs,
      250,
    );
  }

  /** vesperd's link to the guest agent is up and every attached probe is loaded in it. */
  async waitLinked(timeoutMs: number): Promise<void> {
    let last: unknown = null;
    await waitFor(
      'vesperd linked to the guest, probes loaded',
      async () => {
        try {
          const s = await this.vesperd.json<{ link: string; attached: Array<{ loaded: boolean }> }>(['status', this.rig.name]);
          last = s;
          return s.link === 'connected' && s.attached.every((p) => p.loaded);
        } catch (err) {
          last = (err as Error).message;
          return false;
        }
      },
      timeoutMs,
      250,
    ).catch((err: Error) => {
      // what vesperd said last, and its log: why the link or a probe did not come back
      throw new Error(`${err.message}\nlast status: ${JSON.stringify(last)}\nvesperd log:\n${this.vesperd.log.slice(-6000)}`);
    });
  }

  /**
   * What a test waiting for Pacemaker saw, for its failure message: the alerts vesperd got, the
   * alert agent's record of every alert it was run for (sent or not, how long it took), the
   * alert lines and the tail of Pacemaker's log, and crm_mon's view of the resource.
   */
  async diagnose(): Promise<string> {
    const tail = (text: string, n: number): string => text.trimEnd().split('\n').slice(-n).join('\n');
    const alerts = this.events
      .filter((e) => e.plugin === 'pacemaker')
      .map((e) => {
        const p = e.payload ?? {};
        const f = (k: string): string => JSON.stringify(p[k] ?? '-');
        return `#${e.id} ${e.event} vm=${e.vm || '-'} seq=${f('nodeSequence')} task=${f('task')} rsc=${f('rsc')} rc=${f('rc')} status=${f('status')}`;
      });
    const pcmkLog = join(RIG_LOG_DIR, NODE, 'pacemaker.log');
    const logText = existsSync(pcmkLog) ? readFileSync(pcmkLog, 'utf8') : '';
    const alertLines = logText.split('\n').filter((l) => /alert/i.test(l));
    let crmMon: string;
    try {
      const r = await this.pcmk.run(NODE, 'crm_mon', ['-1', '-r', '-f', '-t'], { timeoutMs: 10_000 });
      crmMon = `exit ${r.code}\n${r.stdout}${r.stderr}`;
    } catch (err) {
      crmMon = (err as Error).message;
    }
    return [
      `pacemaker events vesperd stored (${alerts.length}):`,
      tail(alerts.join('\n') || '(none)', 40),
      `the alert agent's record ${this.alertLog}:`,
      tail(
        (existsSync(this.alertLog) ? readFileSync(this.alertLog, 'utf8') : '') || '(empty: the agent never ran, or could not write it)',
        40,
      ),
      `alert lines of ${pcmkLog}:`,
      tail(alertLines.join('\n') || (logText ? '(none)' : '(no log)'), 30),
      `last lines of ${pcmkLog}:`,
      tail(logText || '(no log)', 40),
      'crm_mon -1 -r -f -t:',
      crmMon.trimEnd(),
      `uptime: ${readFileSync('/proc/loadavg', 'utf8').trim()}`,
    ].join('\n');
  }

  /** waitFor(), and on a timeout the error carries diagnose()'s account of what was seen. */
  async waitForPacemaker<T>(
    what: string,
    probe: () => T | undefined | false | Promise<T | undefined | false>,
    timeoutMs: number,
    everyMs = 100,
  ): Promise<T> {
    try {
      return await waitFor(what, probe, timeoutMs, everyMs);
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${await this.diagnose()}`, { cause: err });
    }
  }

  /** Events of one plugin for the guest that vesperd stored after `afterId`. */
  eventsOf(plugin: string, afterId = 0): EventLine[] {
    return this.events.filter((e) => e.plugin === plugin && e.id > afterId && (e.vm === this.rig.name || plugin === 'pacemaker'));
  }

  /** The id of the newest event seen so far: a cursor for "after this point". */
  get lastId(): number {
    return this.events.reduce((m, e) => Math.max(m, e.id), 0);
  }

  async stop(): Promise<void> {
    this.stopFollow?.();
    this.stopFollow = null;
    // Pacemaker created the domain, so the rig will not destroy it: the resource goes first,
    // and virsh makes sure whatever is left is gone.
    if (this.pcmk) {
      await this.pcmk.deleteResource(this.resource).catch((err: Error) => this.say(`pacemaker: deleting ${this.resource}: ${err.message}`));
      await this.pcmk.stop().catch((err: Error) => this.say(`pacemaker: stop: ${err.message}`));
    }
    if (this.rig) {
      await new Promise<void>((r) => execFile('virsh', ['-c', 'qemu:///system', 'destroy', this.rig.name], () => r()));
      await this.rig.stop().catch(() => undefined);
    }
    await this.vesperd?.killAll();
    this.alertCopy?.remove();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
