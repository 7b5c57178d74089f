/** vesper's version, shared by host and agent; a unit test keeps it equal to package.json. */
export const VESPER_VERSION = '0.1.0';
