// Text in and out of libvirt's XML (names, paths, attributes): the five predefined entities.
// vesper writes and reads only small, known pieces of domain XML, with strings and regular
// expressions; these two keep what it writes well-formed and what it reads literal.

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', "'": '&apos;', '"': '&quot;' };
const UNESCAPES: Record<string, string> = { amp: '&', lt: '<', gt: '>', apos: "'", quot: '"' };

/** A string as XML text or an attribute value (either quote). */
export function escapeXml(s: string): string {
  return s.replace(/[&<>'"]/g, (c) => ESCAPES[c] ?? c);
}

/** The string an XML text or attribute value stands for (the predefined entities only). */
export function unescapeXml(s: string): string {
  return s.replace(/&(amp|lt|gt|apos|quot);/g, (_, e: string) => UNESCAPES[e] ?? _);
}
