// Build the page into dist/: bundle src/app.js (with the NATS client) and copy the static files.
import { build } from "esbuild";
import { copyFile, mkdir } from "node:fs/promises";

const here = new URL(".", import.meta.url).pathname;
await mkdir(`${here}dist`, { recursive: true });
await build({
  entryPoints: [`${here}src/app.js`],
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  sourcemap: true,
  outfile: `${here}dist/app.js`,
  logLevel: "warning",
});
for (const file of ["index.html", "style.css"]) {
  await copyFile(`${here}src/${file}`, `${here}dist/${file}`);
}
console.log("built gateway/web/dist");
