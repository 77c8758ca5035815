// Runs the explorer page's own script against a live node, without a browser: a document
// whose elements (the page's ids) record their innerHTML, and fetch against the node's URL.
// Prints what the page rendered as JSON, {id: innerHTML}. Usage: node explorer.mjs URL
const base = process.argv[2];
const page = await (await fetch(new URL('/', base))).text();
const script = page.match(/<script>([\s\S]*)<\/script>/);
if (!script) {
  console.error('the page has no script');
  process.exit(2);
}
const elements = {};
for (const [, id] of page.matchAll(/id="([A-Za-z0-9_-]+)"/g)) elements[id] = { innerHTML: '' };
const document = {
  getElementById(id) {
    if (!elements[id]) throw new Error(`the script asks for #${id}, which the page lacks`);
    return elements[id];
  },
};
const get = (path, options) => fetch(new URL(path, base), options);
// The page refreshes every 2 s; one refresh is enough here.
const run = new Function('document', 'fetch', 'setInterval', `${script[1]}\nreturn globalThis.explorerLoaded;`);
await run(document, get, () => 0);
console.log(JSON.stringify(Object.fromEntries(Object.entries(elements).map(([k, v]) => [k, v.innerHTML]))));
