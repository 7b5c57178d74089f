import { describe, expect, it } from 'vitest';
import { escapeXml, unescapeXml } from '../../host/libvirt/xml-text.js';

describe('XML text for libvirt', () => {
  it('escapes the five special characters and reads them back, nothing else', () => {
    const s = `/srv/a&b/<vm>'s "disk".qcow2`;
    expect(escapeXml(s)).toBe('/srv/a&amp;b/&lt;vm&gt;&apos;s &quot;disk&quot;.qcow2');
    expect(unescapeXml(escapeXml(s))).toBe(s);
    // an escaped entity stays literal text once read back, not a second unescape
    expect(unescapeXml('&amp;lt;')).toBe('&lt;');
    expect(unescapeXml('&nbsp; &#39;')).toBe('&nbsp; &#39;');
  });
});
