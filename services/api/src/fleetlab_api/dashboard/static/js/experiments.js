// Every experiment, filtered and sorted, live.
import { live } from "./lib.js";
import { ExperimentTable } from "./table.js";

const table = new ExperimentTable();
table.load();
live({ experiment: (ev) => table.onEvent(ev), resync: () => table.reload() });
