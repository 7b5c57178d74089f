// The little of a logger the actions use. pino's Logger fits it, and so does a test's recorder,
// so the actions never depend on how the daemon logs.

export interface ActionLog {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

const nothing = (): void => undefined;

/** A logger that drops everything (the default when none is given). */
export const silentLog: ActionLog = { debug: nothing, info: nothing, warn: nothing, error: nothing };
