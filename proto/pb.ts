// Loaded before the generated code: 64-bit fields decode to plain numbers, not Long objects.
// Sequence numbers and monotonic nanoseconds stay exact below 2^53 (104 days of uptime for
// mono_ns); wall-clock nanoseconds lose a few hundred ns of precision, which no failure
// report needs. Numbers keep the host's decode path free of an allocation per field.
import $protobuf from 'protobufjs/minimal.js';

$protobuf.util.Long = undefined as unknown as typeof $protobuf.util.Long;
$protobuf.configure();
