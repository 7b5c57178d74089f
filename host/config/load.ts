// Reading the config file. Every mistake in it is reported at once, in one VSP_CONFIG_INVALID
// error with one line per mistake (`FILE:LINE:COL: key.path: what is wrong`), so an operator
// fixes the file in one go instead of one restart per typo. A file that is not valid YAML gets
// its syntax errors only (the structure under them cannot be trusted).
import { readFileSync } from 'node:fs';
import { LineCounter, parseDocument } from 'yaml';
import { ErrorCode, VesperError } from '../../proto/errors.js';
import { keyPath, positionOf, problemsOfIssues, suggest } from './mistakes.js';
import { crossCheck, fileSchema, toConfig, type Config, type Problem } from './schema.js';

export const DEFAULT_CONFIG_PATH = '/etc/vesper/vesper.yaml';

/**
 * Reads and checks the config. Without a path, DEFAULT_CONFIG_PATH is read and may be missing
 * (all defaults then); a path that was given must exist. (`defaultPath` stands in for
 * DEFAULT_CONFIG_PATH in tests.)
 */
export function loadConfig(path?: string, o: { defaultPath?: string } = {}): Config {
  const file = path ?? o.defaultPath ?? DEFAULT_CONFIG_PATH;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && path === undefined) return parseConfig('', file);
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : (err as Error).message;
    throw new VesperError(ErrorCode.CONFIG_INVALID, `${file}: cannot read the config file: ${why}`, code ?? '', { cause: err });
  }
  return parseConfig(text, file);
}

/** Checks config text; `file` names it in messages. */
export function parseConfig(text: string, file: string): Config {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length) {
    const lines = doc.errors.map((e) => {
      const at = e.linePos?.[0] ?? { line: 1, col: 1 };
      // The library's message ends with " at line L, column C:" and a picture of the line.
      const what = e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
      return `${file}:${at.line}:${at.col}: YAML syntax: ${what}`;
    });
    throw new VesperError(ErrorCode.CONFIG_INVALID, lines.join('\n'));
  }
  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: 100 }) ?? {};
  } catch (err) {
    throw new VesperError(ErrorCode.CONFIG_INVALID, `${file}:1:1: YAML: ${(err as Error).message}`, '', { cause: err });
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    const at = positionOf(doc, lc, []);
    throw new VesperError(
      ErrorCode.CONFIG_INVALID,
      `${file}:${at.line}:${at.col}: (top level): must be a mapping of sections (daemon, libvirt, store, channel, actions, filters, attach, pacemaker, ssh, metrics, sinks)`,
    );
  }

  const result = fileSchema.safeParse(raw);
  const problems: Problem[] = [
    ...(result.success ? [] : problemsOfIssues(result.error.issues, raw, fileSchema)),
    ...crossCheck(raw, suggest),
  ];
  if (problems.length || !result.success) {
    const seen = new Set<string>();
    const lines = problems
      .map((p) => {
        const at = positionOf(doc, lc, p.path, p.atKey);
        return { at, line: `${file}:${at.line}:${at.col}: ${keyPath(p.path)}: ${p.message}` };
      })
      .filter((l) => !seen.has(l.line) && seen.add(l.line))
      .sort((a, b) => a.at.line - b.at.line || a.at.col - b.at.col)
      .map((l) => l.line);
    throw new VesperError(ErrorCode.CONFIG_INVALID, lines.join('\n') || `${file}: invalid config`);
  }
  return toConfig(result.data);
}
