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

/**
 * exit_group(argv[1] as a decimal number; 0 without argument), so one file covers every exit
 * status a test asks for.
 */
export function exitWithArgProgram(): Buffer {
  // prettier-ignore
  return elf(Buffer.from([
    0x48, 0x8b, 0x74, 0x24, 0x10, //       mov rsi, [rsp+16]    ; argv[1], NULL when argc is 1
    0x31, 0xff, //                         xor edi, edi
    0x48, 0x85, 0xf6, //                   test rsi, rsi
    0x74, 0x15, //                         jz done
    0x0f, 0xb6, 0x06, //             next: movzx eax, byte [rsi]
    0x83, 0xe8, 0x30, //                   sub eax, '0'
    0x83, 0xf8, 0x09, //                   cmp eax, 9
    0x77, 0x0a, //                         ja done               ; NUL or not a digit
    0x6b, 0xff, 0x0a, //                   imul edi, edi, 10
    0x01, 0xc7, //                         add edi, eax
    0x48, 0xff, 0xc6, //                   inc rsi
    0xeb, 0xeb, //                         jmp next
    0xb8, 231, 0, 0, 0, //           done: mov eax, 231 (exit_group)
    0x0f, 0x05, //                         syscall
  ]));
}

/**
 * A long-running service that really faults on demand: SIGUSR1's handler stores to address 0,
 * so the kernel itself raises SIGSEGV (SEGV_MAPERR), as in a genuine crash. Otherwise it sleeps
 * in pause(); SIGTERM and the rest keep their default actions.
 */
export function crashOnSignalProgram(): Buffer {
  // x86-64 refuses to deliver a signal whose action has no SA_RESTORER (it forces a SIGSEGV
  // with SI_KERNEL instead of running the handler), so the action carries a real
  // rt_sigreturn stub even though the handler never returns.
  const SA_RESTORER = 0x04000000;
  // prettier-ignore
  const setup = [
    0x48, 0x8d, 0x05, 0, 0, 0, 0, //       lea rax, [rip+handler]   (displacement patched below)
    0x48, 0x8d, 0x0d, 0, 0, 0, 0, //       lea rcx, [rip+restorer]
    0x48, 0x83, 0xec, 0x20, //             sub rsp, 32              ; struct kernel_sigaction
    0x48, 0x89, 0x04, 0x24, //             mov [rsp], rax           ; sa_handler
    0x48, 0xc7, 0x44, 0x24, 0x08, 0, 0, 0, 0, // mov qword [rsp+8], SA_RESTORER
    0x48, 0x89, 0x4c, 0x24, 0x10, //       mov [rsp+16], rcx        ; sa_restorer
    0x48, 0xc7, 0x44, 0x24, 0x18, 0, 0, 0, 0, // mov qword [rsp+24], 0 ; sa_mask
    0xbf, 10, 0, 0, 0, //                  mov edi, SIGUSR1
    0x48, 0x89, 0xe6, //                   mov rsi, rsp
    0x31, 0xd2, //                         xor edx, edx             ; no old action
    0x41, 0xba, 8, 0, 0, 0, //             mov r10d, 8              ; sigsetsize
    0xb8, 13, 0, 0, 0, //                  mov eax, 13 (rt_sigaction)
    0x0f, 0x05, //                         syscall
  ];
  // prettier-ignore
  const loop = [
    0xb8, 34, 0, 0, 0, //            loop: mov eax, 34 (pause)
    0x0f, 0x05, //                         syscall
    0xeb, 0xf7, //                         jmp loop
  ];
  const handler = [0xc7, 0x04, 0x25, 0, 0, 0, 0, 0, 0, 0, 0]; // mov dword [0], 0
  const restorer = [0xb8, 15, 0, 0, 0, 0x0f, 0x05]; // mov eax, 15 (rt_sigreturn); syscall
  const code = Buffer.from([...setup, ...loop, ...handler, ...restorer]);
  const handlerAt = setup.length + loop.length;
  code.writeInt32LE(handlerAt - 7, 3); // rip-relative from the end of the first lea
  code.writeInt32LE(handlerAt + handler.length - 14, 10);
  code.writeUInt32LE(SA_RESTORER, 27);
  return elf(code);
}

export function writeProgram(path: string, bytes: Buffer): string {
  writeFileSync(path, bytes);
  chmodSync(path, 0o755);
  return path;
}
