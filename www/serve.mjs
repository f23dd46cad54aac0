#!/usr/bin/env node
// A dependency-free static server for the demo page (Node 20).
//
//   node www/serve.mjs [--port N] [--mount /prefix/=dir ...]
//
// Default mounts: / → www/, /pkg/ → pkg/ (both relative to the repository, wherever the command
// runs from) and /models/ → $CANDLEWICK_CACHE/models or ~/.cache/candlewick/models. A --mount
// directory is relative to the current directory; a prefix given twice takes the last
// directory. --port 0 picks a free port. When listening it prints exactly one line on stdout,
// `serving http://127.0.0.1:PORT/`, so a test can read the port.
//
// Every response is cross-origin isolated (COOP + COEP + CORP), which the browser requires
// before it gives a page SharedArrayBuffer and precise timers. Files are streamed: GGUF models
// are hundreds of MB.
//
// Imported, it exports serve({ port, mounts, isolate }) → Promise<{ url, close }>, where mounts
// maps more prefixes to directories on top of the defaults, and isolate: false leaves out COOP
// and COEP (a page that is not cross-origin isolated, for tests).

import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer } from "node:http";
import { homedir } from "node:os";
import { dirname, extname, join, resolve, sep } from "node:path";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const cache = process.env.CANDLEWICK_CACHE || join(homedir(), ".cache", "candlewick");

/** URL prefix → directory served under it. */
export const defaultMounts = {
  "/": join(root, "www"),
  "/pkg/": join(root, "pkg"),
  "/models/": join(cache, "models"),
};

const types = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json; charset=utf-8",
  ".md": "text/markdown; charset=utf-8",
  ".txt": "text/plain; charset=utf-8",
  ".wasm": "application/wasm",
  ".gguf": "application/octet-stream",
  ".png": "image/png",
  ".svg": "image/svg+xml",
  ".ico": "image/x-icon",
};

const isolation = {
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
};
const common = {
  "Cross-Origin-Resource-Policy": "same-origin",
  "X-Content-Type-Options": "nosniff",
  "Cache-Control": "no-cache",
};

/**
 * Starts the server on 127.0.0.1.
 * @param {{ port?: number, mounts?: Record<string, string>, isolate?: boolean }} options
 *   port: 0 (the default) picks a free one; mounts: prefix → directory, added to the defaults;
 *   isolate (default true): send COOP and COEP.
 * @returns {Promise<{ url: string, close: () => Promise<void> }>}
 */
export async function serve({ port = 0, mounts = {}, isolate = true } = {}) {
  // Longest prefix first, so /pkg/ wins over /.
  const table = Object.entries({ ...defaultMounts, ...mounts })
    .map(([prefix, dir]) => [prefix.endsWith("/") ? prefix : `${prefix}/`, resolve(dir)])
    .sort(([a], [b]) => b.length - a.length);
  const headers = isolate ? { ...isolation, ...common } : common;
  const server = createServer((request, response) => {
    respond(table, headers, request, response).catch((error) => {
      // The client went away mid-file, or the disk failed: nothing useful can be sent any more.
      if (error.code !== "ERR_STREAM_PREMATURE_CLOSE") console.error(`serve: ${request.url}: ${error.message}`);
      response.destroy();
    });
  });
  await new Promise((done, fail) => {
    server.once("error", fail);
    server.listen(port, "127.0.0.1", done);
  });
  return {
    url: `http://127.0.0.1:${server.address().port}/`,
    close: () =>
      new Promise((done) => {
        server.close(() => done());
        server.closeAllConnections();
      }),
  };
}

async function respond(table, always, request, response) {
  if (request.method !== "GET" && request.method !== "HEAD") {
    return end(response, always, 405, "method not allowed", { Allow: "GET, HEAD" });
  }
  const file = await locate(table, request.url);
  if (!file) return end(response, always, 404, "not found");
  const { path, info } = file;
  const modified = info.mtime.toUTCString();
  const since = Date.parse(request.headers["if-modified-since"] ?? "");
  const headers = { ...always, "Last-Modified": modified };
  // HTTP dates have whole seconds; the file's mtime has milliseconds.
  if (since >= Math.floor(info.mtimeMs / 1000) * 1000) {
    response.writeHead(304, headers);
    return response.end();
  }
  response.writeHead(200, {
    ...headers,
    "Content-Type": types[extname(path).toLowerCase()] ?? "application/octet-stream",
    "Content-Length": info.size,
  });
  if (request.method === "HEAD") return response.end();
  await pipeline(createReadStream(path), response);
}

/** The regular file a request path names, or null (missing, outside its mount, not a file). */
async function locate(table, url) {
  let path;
  try {
    path = decodeURIComponent(new URL(url, "http://localhost").pathname);
  } catch {
    return null; // malformed %-escape
  }
  if (path.includes("\0")) return null;
  const mount = table.find(([prefix]) => path.startsWith(prefix));
  if (!mount) return null;
  const [prefix, dir] = mount;
  let target = resolve(dir, `.${sep}${path.slice(prefix.length)}`);
  // resolve() has applied any "..": whatever lands outside the mounted directory is refused.
  if (target !== dir && !target.startsWith(dir + sep)) return null;
  try {
    let info = await stat(target);
    if (info.isDirectory()) {
      target = join(target, "index.html");
      info = await stat(target);
    }
    return info.isFile() ? { path: target, info } : null;
  } catch {
    return null;
  }
}

function end(response, always, status, text, extra = {}) {
  response.writeHead(status, { ...always, ...extra, "Content-Type": "text/plain; charset=utf-8" });
  response.end(`${status} ${text}\n`);
}

function parseArgs(args) {
  const options = { port: 8000, mounts: {} };
  for (let i = 0; i < args.length; i++) {
    const flag = args[i];
    const value = args[++i] ?? "";
    if (flag === "--port") {
      options.port = Number(value);
      if (!/^\d+$/.test(value) || options.port > 65535) usage(`bad port: ${value}`);
    } else if (flag === "--mount") {
      const at = value.indexOf("=");
      if (!value.startsWith("/") || at < 1 || at === value.length - 1) usage(`bad mount: ${value}`);
      options.mounts[value.slice(0, at)] = resolve(value.slice(at + 1));
    } else {
      usage(flag === "--help" ? "" : `unknown argument: ${flag}`);
    }
  }
  return options;
}

function usage(problem) {
  if (problem) console.error(`serve.mjs: ${problem}`);
  console.error("usage: node www/serve.mjs [--port N] [--mount /prefix/=dir ...]");
  process.exit(problem ? 2 : 0);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { url } = await serve(parseArgs(process.argv.slice(2)));
  console.log(`serving ${url}`);
}
