// The fencing token in the domain a failover defines on the standby: an element of vesper's own
// in the domain's <metadata>, e.g.
//
//   <vesper:failover xmlns:vesper="https://vesper.invalid/xmlns/failover/1" fence="7" owner="host-a/1234"/>
//
// A manager about to define the VM on a standby reads it first: a definition marked by a newer
// failover (a higher token for the same lease key) means this manager is the stale one, and it
// stops. That is the fencing-token check of the literature, done where the copy would be made.
// It is a check before an act, so it narrows races; libvirt's lock manager closes them.
import { ErrorCode, VesperError } from '../../proto/errors.js';
import type { Hypervisor } from '../libvirt/hypervisor.js';
import { escapeXml, unescapeXml } from '../libvirt/xml-text.js';

export const FENCE_MARK_NS = 'https://vesper.invalid/xmlns/failover/1';

export interface FenceMark {
  fence: number;
  owner: string;
}

/** The domain XML with our mark in <metadata> (an older mark of ours replaced). */
export function withFenceMark(xml: string, mark: FenceMark): string {
  const el = `<vesper:failover xmlns:vesper="${FENCE_MARK_NS}" fence="${mark.fence}" owner="${escapeXml(mark.owner)}"/>`;
  const out = xml.replace(
    /\s*<([A-Za-z_][\w.-]*):failover\b[^>]*\bxmlns:\1=(['"])https:\/\/vesper\.invalid\/xmlns\/failover\/1\2[^>]*\/>/g,
    '',
  );
  if (/<metadata\s*\/>/.test(out)) return out.replace(/<metadata\s*\/>/, `<metadata>\n    ${el}\n  </metadata>`);
  if (/<metadata>/.test(out)) return out.replace(/<metadata>/, `<metadata>\n    ${el}`);
  let placed = false;
  const withMeta = out.replace(/<\/name>/, (m) => {
    placed = true;
    return `${m}\n  <metadata>\n    ${el}\n  </metadata>`;
  });
  if (!placed) throw new VesperError(ErrorCode.ACTION_FAILED, 'the domain XML has no <name>');
  return withMeta;
}

/** Our mark in a domain XML, or null. */
export function readFenceMark(xml: string): FenceMark | null {
  const m = /<([A-Za-z_][\w.-]*):failover\b([^>]*)\/>/.exec(xml);
  if (!m || !m[2]!.includes(FENCE_MARK_NS)) return null;
  const fence = Number(/\bfence=(['"])(\d+)\1/.exec(m[2]!)?.[2]);
  if (!Number.isSafeInteger(fence)) return null;
  return { fence, owner: unescapeXml(/\bowner=(['"])([^'"]*)\1/.exec(m[2]!)?.[2] ?? '') };
}

/**
 * "fence N by OWNER" when the standby's definition of `name` carries a higher token than `fence`;
 * '' when it carries none, a lower or equal one, or there is no such domain.
 */
export async function newerFenceOnStandby(standby: Hypervisor, name: string, fence: number): Promise<string> {
  let xml: string;
  try {
    xml = await standby.xml(name);
  } catch (err) {
    if (VesperError.from(err).code === ErrorCode.DOMAIN_NOT_FOUND) return '';
    throw new VesperError(ErrorCode.ACTION_FAILED, `read ${name} on the standby: ${(err as Error).message}`, '', { cause: err });
  }
  const mark = readFenceMark(xml);
  return mark && mark.fence > fence ? `fence ${mark.fence} by ${mark.owner || 'unknown'}` : '';
}
