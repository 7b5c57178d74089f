// Tiny static x86-64 executables, written byte by byte: a program that really faults (no
// kill -SEGV), one that exits with a given code. They need no compiler and no libc, so the
// same files work on the host and inside a minimal guest.
import { chmodSync, writeFileSync } from 'node:fs';

const BASE = 0x400000;
const HEADERS = 64 + 56;

function elf(code: Buffer): Buffer {
  const h = Buffer.alloc(HEADERS);
  // ELF header
  h.write('\x7fELF', 0, 'latin1');
  h[4] = 2; // 64-bit
  h[5] = 1; // little endian
  h[6] = 1; // version
  h.writeUInt16LE(2, 16); // ET_EXEC
  h.writeUInt16LE(0x3e, 18); // x86-64
  h.writeUInt32LE(1, 20);
  h.writeBigUInt64LE(BigInt(BASE + HEADERS), 24); // entry
  h.writeBigUInt64LE(64n, 32); // program headers offset
  h.writeUInt16LE(64, 52); // header size
  h.writeUInt16LE(56, 54); // program header size
  h.writeUInt16LE(1, 56); // one program header
  // PT_LOAD of the whole file, read + execute
  const p = 64;
  h.writeUInt32LE(1, p);
  h.writeUInt32LE(5, p + 4);
  h.writeBigUInt64LE(0n, p + 8);
  h.writeBigUInt64LE(BigInt(BASE), p + 16);
  h.writeBigUInt64LE(BigInt(BASE), p + 24);
  const size = BigInt(HEADERS + code.length);
  h.writeBigUInt64LE(size, p + 32);
  h.writeBigUInt64LE(size, p + 40);
  h.writeBigUInt64LE(0x1000n, p + 48);
  return Buffer.concat([h, code]);
}

/** Stores to address 0: the kernel raises SIGSEGV (si_code SEGV_MAPERR). */
export function segfaultProgram(): Buffer {
  return elf(Buffer.from([0xc7, 0x04, 0x25, 0, 0, 0, 0, 0, 0, 0, 0])); // mov dword [0], 0
}

/** exit_group(code). */
export function exitProgram(code: number): Buffer {
  const c = Buffer.from([0xbf, 0, 0, 0, 0, 0xb8, 231, 0, 0, 0, 0x0f, 0x05]); // mov edi, code; mov eax, 231; syscall
  c.writeUInt32LE(code & 0xff, 1);
  return elf(c);
}

export function writeProgram(path: string, bytes: Buffer): string {
  writeFileSync(path, bytes);
  chmodSync(path, 0o755);
  return path;
}
