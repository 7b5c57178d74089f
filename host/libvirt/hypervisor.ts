// What the rest of the host needs from a hypervisor: define, start and stop domains, read their
// state and XML, and hot-plug devices (the agent's channel). One small interface so the failure
// detector does not depend on how libvirt is reached (native binding, virsh, or a test double).
//
// Every method rejects with a VesperError: VSP_LIBVIRT_UNAVAILABLE (daemon not reachable),
// VSP_DOMAIN_NOT_FOUND (no such domain), VSP_DISK_LOCKED (a start that libvirt's lock manager, or
// QEMU's own image locking, refused because another QEMU holds the disks), or VSP_LIBVIRT_CALL
// (libvirt refused the call otherwise).

/**
 * Domain states, in virsh's words (`virsh domstate`), so logs and `virsh` output read the same.
 * "idle" is libvirt's BLOCKED, "in shutdown" its SHUTDOWN (the guest is shutting down).
 */
export type DomainStateName = 'no state' | 'running' | 'idle' | 'paused' | 'in shutdown' | 'shut off' | 'crashed' | 'pmsuspended';

export interface DomainInfo {
  name: string;
  uuid: string;
  /** libvirt's domain id while it runs, null when it is shut off */
  id: number | null;
  state: DomainStateName;
}

export interface DeviceChangeOptions {
  /** change the running domain */
  live: boolean;
  /** change the persistent definition (takes effect at the next start) */
  config: boolean;
}

export interface Hypervisor {
  listDomains(): Promise<DomainInfo[]>;
  /** Defines (or redefines) a persistent domain; returns its name. */
  define(xml: string): Promise<string>;
  start(name: string): Promise<void>;
  /**
   * Starts a transient domain from XML with its CPUs paused (QEMU opens its disks, runs nothing);
   * returns its name. libvirt's lock manager takes its locks only when the CPUs start (resume).
   */
  createPaused(xml: string): Promise<string>;
  /** Lets a paused domain's CPUs run; libvirt's lock manager acquires the disks' locks first. */
  resume(name: string): Promise<void>;
  /** Hard power-off: QEMU is killed. */
  destroy(name: string): Promise<void>;
  /** Asks the guest to power off (ACPI); returns at once, the guest may ignore it. */
  shutdown(name: string): Promise<void>;
  /** Removes the persistent definition; a running domain keeps running as a transient one. */
  undefine(name: string): Promise<void>;
  /** Asks the guest to reboot (ACPI or agent); returns at once, the guest may ignore it. */
  reboot(name: string): Promise<void>;
  /** State and reason as `virsh domstate --reason` words, e.g. { state: 'shut off', reason: 'crashed' }. */
  state(name: string): Promise<{ state: string; reason: string }>;
  /** The live XML while the domain runs (with aliases and generated paths), else the persistent one. */
  xml(name: string): Promise<string>;
  attachDevice(name: string, xml: string, opts: DeviceChangeOptions): Promise<void>;
  detachDevice(name: string, xml: string, opts: DeviceChangeOptions): Promise<void>;
  close(): Promise<void>;
}
