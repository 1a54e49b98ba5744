// node-postgres (pg, pg-cursor, pg-copy-streams) and knex with default settings against
// PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE; PEER_TENANT set: a tenant session that must see only
// its rows of peer_items; PEER_OPTIONS: startup options (direct runs). One line per check:
// "ok NAME" or "FAIL NAME: reason". Run with NODE_PATH=tests/peer/node/node_modules.
'use strict';
const pg = require('pg');
const Cursor = require('pg-cursor');
const { to: copyTo } = require('pg-copy-streams');

const TENANT = process.env.PEER_TENANT || null;
const config = { options: process.env.PEER_OPTIONS || undefined, ssl: false };
// A tenant's rows get their tenant from the session; a trusted user names it (acme's rows).
const INSERT = TENANT ? 'INSERT INTO peer_items (name) VALUES ($1)'
  : "INSERT INTO peer_items (tenant_id, name) VALUES ('acme', $1)";
let failures = 0;

function expect(cond, why) {
  if (!cond) throw new Error(why);
}

async function check(client, name, body) {
  try {
    await body(client);
    console.log(`ok ${name}`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}: ${e.code ? e.code + ' ' : ''}${String(e.message).replace(/\n/g, ' ')}`);
  }
  try { await client.query('ROLLBACK'); } catch (e) { /* the session is gone: later checks say so */ }
}

async function tenantsSeen(c) {
  const r = await c.query('SELECT DISTINCT tenant_id FROM peer_items ORDER BY 1');
  return r.rows.map((row) => row.tenant_id);
}

async function main() {
  const client = new pg.Client(config);
  client.on('error', (e) => console.log(`FAIL client_error_event: ${e.message}`));
  try {
    await client.connect();
    console.log('ok connect');
  } catch (e) {
    console.log(`FAIL connect: ${e.code || ''} ${e.message}`);
    process.exit(1);
  }
  await check(client, 'metadata', async (c) => {
    const r = await c.query("SELECT column_name FROM information_schema.columns WHERE table_name = 'peer_items' ORDER BY ordinal_position");
    expect(r.rows.map((x) => x.column_name).join(',') === 'id,tenant_id,name', `columns ${JSON.stringify(r.rows)}`);
    const t = await c.query("SELECT count(*)::int AS n FROM pg_catalog.pg_tables WHERE tablename = 'peer_items'");
    expect(t.rows[0].n === 1, 'pg_tables does not list peer_items');
    expect(r.fields[0].dataTypeID === 19, `column_name type oid ${r.fields[0].dataTypeID}`);  // sql_identifier is name
  });
  await check(client, 'prepared', async (c) => {
    for (let i = 0; i < 4; i++) {
      const r = await c.query({ name: 'peer_add', text: 'SELECT $1::int + 1 AS n', values: [i] });
      expect(r.rows[0].n === i + 1, `result ${r.rows[0].n}`);
    }
  });
  await check(client, 'batch', async (c) => {
    await c.query('BEGIN');
    await Promise.all([...Array(50).keys()].map((i) => c.query(INSERT, [`batch ${i}`])));  // queued back to back
    const r = await c.query("SELECT count(*)::int AS n FROM peer_items WHERE name LIKE 'batch %'");
    expect(r.rows[0].n === 50, `rows ${r.rows[0].n}`);
  });
  await check(client, 'cursor', async (c) => {
    await c.query('BEGIN');
    const cursor = c.query(new Cursor('SELECT g FROM generate_series(1, 95) g'));
    let n = 0;
    for (;;) {
      const rows = await cursor.read(10);
      if (rows.length === 0) break;
      n += rows.length;
    }
    await cursor.close();
    expect(n === 95, `rows ${n}`);
  });
  await check(client, 'cancel', async (c) => {
    const q = c.query('SELECT pg_sleep(10)');
    setTimeout(() => { new pg.Client(config).cancel(c, c.activeQuery); }, 500);
    let err = null;
    try { await q; } catch (e) { err = e; }
    expect(err && err.code === '57014', `error ${err && err.code} ${err && err.message}`);
    const r = await c.query('SELECT 1 AS one');
    expect(r.rows[0].one === 1, 'session unusable after cancel');
  });
  await check(client, 'copy_to', async (c) => {
    const stream = c.query(copyTo('COPY (SELECT name FROM peer_items ORDER BY id) TO STDOUT'));
    let text = '';
    for await (const chunk of stream) text += chunk.toString();
    expect(text.includes('\n'), `copied ${JSON.stringify(text)}`);
    if (TENANT) expect(!text.includes('GLOBEX'), `another tenant's rows: ${text}`);
  });
  await check(client, 'listen_notify', async (c) => {
    const got = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no notification in 2 s')), 2000);
      c.once('notification', (msg) => { clearTimeout(timer); resolve(msg); });
    });
    await c.query('LISTEN peer_channel');
    await c.query("NOTIFY peer_channel, 'hello'");
    const msg = await got;
    expect(msg.channel === 'peer_channel' && msg.payload === 'hello', `${msg.channel}/${msg.payload}`);
    // its own notification carries its BackendKeyData pid (transaction pooling too; README "Compatibility")
    expect(msg.processId === c.processID, `notification pid ${msg.processId} != BackendKeyData ${c.processID}`);
    await c.query('UNLISTEN peer_channel');
  });
  await check(client, 'backend_identity', async (c) => {
    const r = await c.query('SELECT pg_backend_pid() AS pid');
    expect(r.rows[0].pid === c.processID, `pg_backend_pid() ${r.rows[0].pid} != BackendKeyData ${c.processID}`);
  });
  await check(client, 'savepoint', async (c) => {
    await c.query('BEGIN');
    await c.query(INSERT, ['sp before']);
    await c.query('SAVEPOINT sp1');
    let err = null;
    try { await c.query('SELECT 1/0'); } catch (e) { err = e; }
    expect(err && err.code === '22012', `error ${err && err.code}`);
    await c.query('ROLLBACK TO SAVEPOINT sp1');
    await c.query(INSERT, ['sp after']);
    const r = await c.query("SELECT count(*)::int AS n FROM peer_items WHERE name LIKE 'sp %'");
    expect(r.rows[0].n === 2, `rows ${r.rows[0].n}`);
  });
  await check(client, 'error_fields', async (c) => {
    let err = null;
    try { await c.query('SELECT 1 FROM peer_items WHERE'); } catch (e) { err = e; }
    expect(err && err.code === '42601', `error ${err && err.code}`);
    expect(err.position === '31', `position ${err.position}`);
    err = null;
    try { await c.query('SELECT nosuchcolumn FROM peer_items'); } catch (e) { err = e; }
    expect(err && err.code === '42703', `error ${err && err.code}`);
    expect(err.position === '8', `position ${err.position}`);
  });
  await check(client, 'crud', async (c) => {
    const before = await tenantsSeen(c);
    if (TENANT) expect(before.join() === TENANT, `tenant sees ${before}`);
    else expect(before.length >= 2, `trusted sees ${before}`);
    await c.query('BEGIN');
    await c.query(INSERT, ['node']);
    const up = await c.query("UPDATE peer_items SET name = name || '!' WHERE name = 'node'");
    expect(up.rowCount === 1, `updated ${up.rowCount}`);
    const all = await c.query('UPDATE peer_items SET name = name');
    const del = await c.query("DELETE FROM peer_items WHERE name = 'node!'");
    expect(del.rowCount === 1, `deleted ${del.rowCount}`);
    await c.query('COMMIT');
    const n = await c.query('SELECT count(*)::int AS n FROM peer_items');
    expect(n.rows[0].n === all.rowCount - 1, `count ${n.rows[0].n} vs updated ${all.rowCount}`);
    expect((await tenantsSeen(c)).join() === before.join(), 'tenants changed');
  });
  await client.end();
  await knexChecks();
  process.exit(failures === 0 ? 0 : 2);
}

async function knexChecks() {
  const knex = require('knex')({ client: 'pg', connection: config, pool: { min: 0, max: 2 } });
  const fake = { query: (sql) => knex.raw(sql) };  // check()'s ROLLBACK through the pool
  await check(fake, 'knex_query_builder', async () => {
    const rows = await knex('peer_items').select('tenant_id', 'name').orderBy('id');
    expect(rows.length >= 2, `rows ${rows.length}`);
    if (TENANT) expect(rows.every((r) => r.tenant_id === TENANT), `another tenant's rows: ${JSON.stringify(rows)}`);
    await knex.transaction(async (trx) => {
      const row = TENANT ? { name: 'knex' } : { tenant_id: 'acme', name: 'knex' };
      const [ins] = await trx('peer_items').insert(row).returning(['id', 'tenant_id']);
      expect(ins.tenant_id === (TENANT || 'acme'), `inserted as ${ins.tenant_id}`);
      const n = await trx('peer_items').where({ id: ins.id }).update({ name: 'knex!' });
      expect(n === 1, `updated ${n}`);
      await trx('peer_items').where({ id: ins.id }).del();
    });
    const info = await knex('peer_items').columnInfo();
    expect(Object.keys(info).includes('name'), `columnInfo ${Object.keys(info)}`);
  });
  await knex.destroy();
}

main().catch((e) => { console.log(`FAIL main: ${e.stack}`); process.exit(1); });
