// The `vesper` man page and bash completion, generated from the CLI's own command tree
// (buildProgram()), so that they list exactly the verbs and options the program has.
import type { Command, Option } from 'commander';

interface Hidden {
  _hidden?: boolean;
}

/** Every visible command below `cmd`, with its path of names (the root's path is []). */
export function walk(cmd: Command, path: string[] = []): { path: string[]; cmd: Command }[] {
  const out = [{ path, cmd }];
  for (const c of cmd.commands) {
    if ((c as unknown as Hidden)._hidden) continue;
    out.push(...walk(c, [...path, c.name()]));
  }
  return out;
}

function visibleOptions(cmd: Command): Option[] {
  return cmd.options.filter((o) => !o.hidden);
}

/** roff text: a backslash doubled, a leading dot or quote guarded. */
function roff(text: string): string {
  return text
    .replace(/\\/g, '\\e')
    .split('\n')
    .map((l) => (/^[.']/.test(l) ? `\\&${l}` : l))
    .join('\n');
}

/** man(7) page: NAME, SYNOPSIS, DESCRIPTION, then each command's help as `vesper CMD --help` prints it. */
export function manPage(program: Command, version: string, date: string): string {
  const lines = [
    `.TH VESPER 1 "${date}" "vesper ${version}" "User Commands"`,
    '.SH NAME',
    `vesper \\- ${roff(program.description())}`,
    '.SH SYNOPSIS',
    '.B vesper',
    '[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]',
    '.SH DESCRIPTION',
    roff(
      'vesper talks to vesperd, the host manager, over its API socket; `vesper daemon` runs vesperd itself ' +
        '(what the systemd unit vesperd.service starts). Results go to stdout, logs and errors to stderr; an error ' +
        'prints its stable VSP_* code and sets the exit status.',
    ),
    '.SH COMMANDS',
  ];
  for (const { path, cmd } of walk(program)) {
    if (path.length === 0) continue;
    lines.push(`.SS vesper ${roff(path.join(' '))}`, '.nf', roff(cmd.helpInformation().trimEnd()), '.fi');
  }
  lines.push(
    '.SH FILES',
    '.TP',
    '.I /etc/vesper/vesper.yaml',
    "vesperd's configuration (every key optional).",
    '.TP',
    '.I /etc/vesper/host.key, /etc/vesper/host.pub',
    'the host key that signs the probe modules pushed to guests (made on first start).',
    '.TP',
    '.I /var/lib/vesper/events.db',
    'the event store.',
    '.TP',
    '.I /run/vesper/vesperd.sock',
    'the API socket (group vesper).',
    '.TP',
    '.I /usr/lib/vesper/',
    'the runtime, the probe catalogue, the agent bundle and the Pacemaker alert agent.',
    '.SH ENVIRONMENT',
    '.TP',
    '.B VESPER_SOCKET',
    'the API socket, instead of /run/vesper/vesperd.sock.',
    '.TP',
    '.B VESPER_ASSETS',
    'a folder holding probes/ and agent/ to use instead of the installed ones.',
    '.SH SEE ALSO',
    '.BR virsh (1),',
    '.BR systemctl (1)',
    '',
  );
  return lines.join('\n');
}

function bashWord(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A bash completion function: verbs by position, then each verb's options. */
export function bashCompletion(program: Command): string {
  const subs: string[] = [];
  const opts: string[] = [];
  for (const { path, cmd } of walk(program)) {
    const key = bashWord(['vesper', ...path].join(' ')); // bash refuses an empty key
    const children = cmd.commands.filter((c) => !(c as unknown as Hidden)._hidden).map((c) => c.name());
    const flags = visibleOptions(cmd).flatMap((o) => [o.short, o.long].filter((f): f is string => !!f));
    if (path.length === 0) flags.push('--help', '--version');
    else flags.push('--help');
    subs.push(`  [${key}]=${bashWord(children.join(' '))}`);
    opts.push(`  [${key}]=${bashWord(flags.join(' '))}`);
  }
  return [
    '# bash completion for vesper (generated from the command tree by scripts/package-docs.ts)',
    'declare -gA _vesper_subs=(',
    ...subs,
    ')',
    'declare -gA _vesper_opts=(',
    ...opts,
    ')',
    '_vesper() {',
    '  local cur=${COMP_WORDS[COMP_CWORD]} path=vesper next w i',
    '  for ((i = 1; i < COMP_CWORD; i++)); do',
    '    w=${COMP_WORDS[i]}',
    '    [[ $w == -* ]] && continue',
    '    next="$path $w"',
    '    [[ -n ${_vesper_subs[$next]+set} ]] && path=$next',
    '  done',
    '  if [[ $cur == -* ]]; then',
    '    mapfile -t COMPREPLY < <(compgen -W "${_vesper_opts[$path]}" -- "$cur")',
    '  else',
    '    mapfile -t COMPREPLY < <(compgen -W "${_vesper_subs[$path]}" -- "$cur")',
    '  fi',
    '}',
    'complete -F _vesper vesper',
    '',
  ].join('\n');
}
