// Turns wasm-pack's output in pkg/ into the npm package: adds the two entry points (index.js
// for browsers, node.js for Node.js), each initialising the wasm module itself, and points
// package.json at them. The threaded build in pkg/threads/ goes into the package too (index.js
// picks it where it can run); wasm-pack's `*` .gitignore there would keep it out.
import { access, copyFile, readFile, rm, writeFile } from "node:fs/promises";

const here = new URL("./", import.meta.url);
const pkg = new URL("../pkg/", import.meta.url);
const manifest = JSON.parse(await readFile(new URL("package.json", pkg), "utf8"));

await access(new URL("threads/candlewick_bg.wasm", pkg)).catch(() => {
    throw new Error("pkg/threads/ is missing: build the threaded wasm first (make pkg)");
});
await rm(new URL("threads/.gitignore", pkg), { force: true });
for (const entry of ["index.js", "node.js", "freed.js", "index.d.ts"]) await copyFile(new URL(entry, here), new URL(entry, pkg));
Object.assign(manifest, {
    type: "module",
    main: "index.js",
    types: "index.d.ts",
    exports: { ".": { types: "./index.d.ts", node: "./node.js", default: "./index.js" } },
    files: [...new Set([...(manifest.files ?? []), "index.js", "node.js", "freed.js", "index.d.ts", "threads/"])],
    sideEffects: ["./index.js", "./node.js", "./freed.js", "./snippets/*", "./threads/snippets/*"],
    engines: { node: ">=20" },
});
delete manifest.module;
await writeFile(new URL("package.json", pkg), JSON.stringify(manifest, null, 2) + "\n");
console.log(`pkg/: ${manifest.name} ${manifest.version} (${manifest.files.join(", ")})`);
