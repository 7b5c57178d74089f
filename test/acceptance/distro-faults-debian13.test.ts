// Faults of a real Debian 13 guest (kernel 6.12) with systemd and vesper analyze's verdicts: test/helpers/distro-faults.ts.
import { distroFaultSuite } from '../helpers/distro-faults.js';

distroFaultSuite('debian13');
