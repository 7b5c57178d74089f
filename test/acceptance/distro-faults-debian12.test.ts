// Faults of a real Debian 12 guest (kernel 6.1) with systemd and vesper analyze's verdicts: test/helpers/distro-faults.ts.
import { distroFaultSuite } from '../helpers/distro-faults.js';

distroFaultSuite('debian12');
