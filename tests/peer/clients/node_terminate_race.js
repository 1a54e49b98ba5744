// node-postgres clients that connect, query and end(), N at a time for TOTAL clients: any 'error'
// event after end() (a FATAL written after the client's Terminate) crashes a real Node app.
// Prints "ok terminate_race" or "FAIL terminate_race: reason". Usage: node_terminate_race.js TOTAL N
'use strict';
const pg = require('pg');

const total = Number(process.argv[2] || 200);
const parallel = Number(process.argv[3] || 10);
const errors = [];

async function one(i) {
  const client = new pg.Client({ options: process.env.PEER_OPTIONS || undefined, ssl: false });
  let ended = false;
  client.on('error', (e) => errors.push(`client ${i} ${ended ? 'after' : 'before'} end(): ${e.message}`));
  await client.connect();
  await client.query('SELECT 1');
  ended = true;
  await client.end();
}

async function main() {
  let next = 0;
  const worker = async () => { while (next < total) await one(next++); };
  await Promise.all([...Array(parallel)].map(worker));
  await new Promise((resolve) => setTimeout(resolve, 300));  // late frames arrive after end() resolves
  if (errors.length === 0) console.log(`ok terminate_race`);
  else console.log(`FAIL terminate_race: ${errors.length} of ${total} clients: ${errors[0]}`);
  process.exit(errors.length === 0 ? 0 : 2);
}

main().catch((e) => { console.log(`FAIL terminate_race: ${e.message}`); process.exit(1); });
