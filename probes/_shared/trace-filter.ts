// Building tracefs filter expressions ("field == a || field == b") for a probe's trace() calls.

/** A tracefs filter clause "field == a || field == b", or "" for an empty list. */
export function anyOf(field: string, values: Array<number | string>): string {
  if (!values.length) return '';
  const parts = values.map((v) => (typeof v === 'number' ? `${field} == ${v}` : `${field} == "${v.replace(/["\\]/g, '')}"`));
  return parts.length === 1 ? parts[0]! : `(${parts.join(' || ')})`;
}

export function allOf(...clauses: string[]): string {
  return clauses.filter(Boolean).join(' && ');
}
