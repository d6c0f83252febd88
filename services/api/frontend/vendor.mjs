// Copies the served files of the pinned packages (and their licences) into the dashboard's
// vendor folder. Run by `make vendor` after `npm ci`.
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const vendor = join(here, "..", "src", "fleetlab_api", "dashboard", "static", "vendor");
const files = {
  uplot: ["dist/uPlot.iife.min.js", "dist/uPlot.min.css", "LICENSE", "package.json"],
};
for (const [pkg, names] of Object.entries(files)) {
  const out = join(vendor, pkg);
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  for (const name of names) {
    copyFileSync(join(here, "node_modules", pkg, name), join(out, name.split("/").pop()));
  }
  console.log(`vendored ${pkg} into ${out}`);
}
