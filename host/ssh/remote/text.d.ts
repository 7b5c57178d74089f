// The remote scripts and the unit template are imported as text: esbuild's text loader in
// scripts/build.mjs, the same in vitest.config.ts, and scripts/text-hooks.mjs under tsx.
declare module '*.sh' {
  const text: string;
  export default text;
}
declare module '*.service' {
  const text: string;
  export default text;
}
