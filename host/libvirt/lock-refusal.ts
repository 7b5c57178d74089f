// How a start refused because another QEMU holds the disks reads, in libvirt's words.
//
//   libvirt's lockd (virtlockd)   "resource busy: Lockspace resource '<hash or path>' is locked"
//   libvirt's sanlock plugin      "Failed to acquire lock: <sanlock error>"
//   QEMU's own image locking      'Failed to get "write" lock' (the same host, or shared storage
//                                 whose file locks reach across hosts; not libvirt's doing)
//
// All three are VSP_DISK_LOCKED for the caller; only the first two are the lock manager that
// failover relies on (docs/failures.md#failover), so the guard probe tells them apart.

const LOCK_MANAGER = /Lockspace resource '[^']*' is locked|resource busy|Failed to acquire lock/i;
const QEMU_IMAGE_LOCK = /Failed to get "?(write|shared|consistent read)"? lock/i;

/** The message says another QEMU holds the disks (any of the three above). */
export function isDiskLockRefusal(message: string): boolean {
  return LOCK_MANAGER.test(message) || QEMU_IMAGE_LOCK.test(message);
}

/** The refusal came from libvirt's lock manager (lockd or sanlock), not from QEMU itself. */
export function isLockManagerRefusal(message: string): boolean {
  return LOCK_MANAGER.test(message);
}
