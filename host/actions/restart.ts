// The `restart` action: power the domain off hard and start it again, on the same host. No
// fencing is needed: libvirt's destroy returns once QEMU is gone, and the same libvirt starts
// the domain again, so there is never a moment with two instances.
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { Hypervisor } from '../libvirt/hypervisor.js';

export interface RestartResult {
  vm: string;
  /** true: the domain was running and was destroyed; false: it was already shut off */
  destroyed: boolean;
  /** state before the start, as libvirt said it when destroy had nothing to do */
  stateBefore: string | null;
  started: true;
}

export async function restartDomain(hv: Hypervisor, vm: string): Promise<RestartResult> {
  const destroyed = await destroyIfRunning(hv, vm);
  await hv.start(vm);
  return { vm, destroyed: destroyed.destroyed, stateBefore: destroyed.state, started: true };
}

/**
 * Destroys the domain; a domain that is already shut off is not an error. Anything else libvirt
 * refuses (no such domain, libvirt unreachable) is passed on as it came.
 */
export async function destroyIfRunning(hv: Hypervisor, vm: string): Promise<{ destroyed: boolean; state: string | null }> {
  try {
    await hv.destroy(vm);
    return { destroyed: true, state: null };
  } catch (err) {
    // libvirt refuses to destroy a domain that is not running ("domain is not running", an
    // operation-invalid error): ask for the state instead of guessing from the message.
    if (!(err instanceof VesperError) || err.code !== ErrorCode.LIBVIRT_CALL) throw err;
    let state: string;
    try {
      state = (await hv.state(vm)).state;
    } catch {
      throw err;
    }
    if (state === 'shut off') return { destroyed: false, state };
    throw err;
  }
}
