// Every experiment, filtered and sorted, live.
import { live } from "./lib.js";
import { ExperimentTable } from "./table.js";

const table = new ExperimentTable();
table.load();
// Read again once subscribed: nothing that happened in between is missed.
live({
  experiment: (ev) => table.onEvent(ev),
  scores: (ev) => table.onScores(ev),
  resync: () => table.reload(),
  ready: () => table.sync(),
});
