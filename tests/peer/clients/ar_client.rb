# ActiveRecord (Debian's ruby-activerecord + ruby-pg) without Rails, with its default connection
# settings, against PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE. PEER_TENANT set: a tenant session
# that must see only its rows of peer_items (direct runs pass tenantgate.tenant in PGOPTIONS, which
# libpq sends at startup). One line per check: "ok NAME" or "FAIL NAME: reason".
# CONNECT_ONLY=1: only the connect sequence (the always-on test), then "ok connect".
# CONNECTIONS=N: N pooled connections checked out at once, each running a query (transaction pooling).
require "active_record"

TENANT = ENV["PEER_TENANT"]
$failures = 0

ActiveRecord::Base.establish_connection(
  adapter: "postgresql", host: ENV["PGHOST"], port: ENV["PGPORT"].to_i, username: ENV["PGUSER"],
  password: ENV["PGPASSWORD"], database: ENV["PGDATABASE"], sslmode: "disable"
)

class PeerItem < ActiveRecord::Base
  self.table_name = "peer_items"
end

def expect(cond, why)
  raise why unless cond
end

def check(name)
  yield
  puts "ok #{name}"
rescue StandardError => e
  $failures += 1
  puts "FAIL #{name}: #{e.class}: #{e.message.tr("\n", " ")[0, 300]}"
ensure
  begin
    conn = ActiveRecord::Base.connection
    conn.rollback_db_transaction if conn.transaction_open?
  rescue StandardError
    nil
  end
end

# A tenant's rows get their tenant from the session; a trusted user names it (acme's rows).
def new_item(name)
  TENANT ? { name: name } : { tenant_id: "acme", name: name }
end

def pg_error(err)
  err = err.cause while err.respond_to?(:cause) && err.cause && !err.is_a?(PG::Error)
  err
end

def tenants_seen
  PeerItem.distinct.order(:tenant_id).pluck(:tenant_id)
end

begin
  ActiveRecord::Base.connection.execute("SELECT 1")
  puts "ok connect"
rescue StandardError => e
  puts "FAIL connect: #{e.class}: #{e.message.tr("\n", " ")}"
  exit 1
end
exit 0 if ENV["CONNECT_ONLY"]

if ENV["CONNECTIONS"]
  check("connections") do
    pool = ActiveRecord::Base.connection_pool
    held = (1...ENV["CONNECTIONS"].to_i).map { pool.checkout }  # each one new: its own connect sequence
    (held + [ActiveRecord::Base.connection]).each { |c| c.select_value("SELECT count(*) FROM peer_items") }
    held.each { |c| pool.checkin(c) }
  end
  exit($failures.zero? ? 0 : 2)
end

raw = ActiveRecord::Base.connection.raw_connection

check("metadata") do
  conn = ActiveRecord::Base.connection
  expect(conn.table_exists?("peer_items"), "table_exists? is false")
  expect(conn.columns("peer_items").map(&:name) == %w[id tenant_id name], "columns #{conn.columns("peer_items").map(&:name)}")
  expect(conn.primary_key("peer_items") == "id", "primary_key #{conn.primary_key("peer_items").inspect}")
  expect(PeerItem.columns_hash["name"].type == :text, "type #{PeerItem.columns_hash["name"].type}")
end

check("prepared") do
  first = PeerItem.order(:id).first
  3.times { expect(PeerItem.find(first.id).name == first.name, "find by id") }  # AR prepares binds
  raw.prepare("peer_add", "SELECT $1::int + 1 AS n")
  4.times { |i| expect(raw.exec_prepared("peer_add", [i]).getvalue(0, 0).to_i == i + 1, "exec_prepared #{i}") }
  raw.exec("DEALLOCATE peer_add")
end

check("batch") do
  ActiveRecord::Base.transaction do
    PeerItem.insert_all((0...50).map { |i| new_item("batch #{i}") })
    expect(PeerItem.where("name LIKE 'batch %'").count == 50, "rows #{PeerItem.where("name LIKE 'batch %'").count}")
    raise ActiveRecord::Rollback
  end
end

check("cursor") do
  n = 0
  ActiveRecord::Base.transaction do
    ActiveRecord::Base.connection.execute("DECLARE peer_cur CURSOR FOR SELECT g FROM generate_series(1, 95) g")
    loop do
      rows = ActiveRecord::Base.connection.select_values("FETCH 10 FROM peer_cur")
      break if rows.empty?

      n += rows.size
    end
  end
  expect(n == 95, "rows #{n}")
  seen = 0
  PeerItem.find_each(batch_size: 1) { seen += 1 }
  expect(seen == PeerItem.count, "find_each #{seen}")
end

check("cancel") do
  t = Thread.new { sleep 0.5; raw.cancel }
  begin
    ActiveRecord::Base.connection.execute("SELECT pg_sleep(10)")
    raise "not cancelled"
  rescue ActiveRecord::QueryCanceled, ActiveRecord::StatementInvalid => e
    expect(pg_error(e).result&.error_field(PG::PG_DIAG_SQLSTATE) == "57014", "error #{e.class} #{e.message}")
  end
  t.join
  expect(ActiveRecord::Base.connection.select_value("SELECT 1") == 1, "session unusable after cancel")
end

check("copy_to") do
  text = +""
  raw.copy_data("COPY (SELECT name FROM peer_items ORDER BY id) TO STDOUT") do
    while (row = raw.get_copy_data)
      text << row
    end
  end
  expect(text.include?("\n"), "copied #{text.inspect}")
  expect(!text.include?("GLOBEX"), "another tenant's rows: #{text}") if TENANT
end

check("listen_notify") do
  raw.exec("LISTEN peer_channel")
  raw.exec("NOTIFY peer_channel, 'hello'")
  got = nil
  raw.wait_for_notify(2) { |channel, pid, payload| got = [channel, pid, payload] }
  expect(got && got[0] == "peer_channel" && got[2] == "hello", "notification #{got.inspect}")
  raw.exec("UNLISTEN peer_channel")
end

check("backend_identity") do
  pid = ActiveRecord::Base.connection.select_value("SELECT pg_backend_pid()")
  expect(pid == raw.backend_pid, "pg_backend_pid() #{pid} != BackendKeyData #{raw.backend_pid}")
end

check("savepoint") do
  ActiveRecord::Base.transaction do
    PeerItem.create!(new_item("sp before"))
    begin
      ActiveRecord::Base.transaction(requires_new: true) do  # SAVEPOINT active_record_1
        ActiveRecord::Base.connection.execute("SELECT 1/0")
      end
    rescue ActiveRecord::StatementInvalid => e
      expect(pg_error(e).result.error_field(PG::PG_DIAG_SQLSTATE) == "22012", e.message)
    end
    PeerItem.create!(new_item("sp after"))
    expect(PeerItem.where("name LIKE 'sp %'").count == 2, "rows #{PeerItem.where("name LIKE 'sp %'").count}")
    raise ActiveRecord::Rollback
  end
end

check("error_fields") do
  [["SELECT 1 FROM peer_items WHERE", "42601", "31"], ["SELECT nosuchcolumn FROM peer_items", "42703", "8"]].each do |sql, state, pos|
    begin
      ActiveRecord::Base.connection.execute(sql)
      raise "no error for #{sql}"
    rescue ActiveRecord::StatementInvalid => e
      result = pg_error(e).result
      expect(result.error_field(PG::PG_DIAG_SQLSTATE) == state, "SQLSTATE #{result.error_field(PG::PG_DIAG_SQLSTATE)}")
      got = result.error_field(PG::PG_DIAG_STATEMENT_POSITION)
      expect(got == pos, "position #{got.inspect} for #{sql}")
    end
  end
end

check("crud") do
  before = tenants_seen
  if TENANT
    expect(before == [TENANT], "tenant sees #{before}")
  else
    expect(before.size >= 2, "trusted sees #{before}")
  end
  item = PeerItem.create!(new_item("ar"))
  expect(PeerItem.find(item.id).tenant_id == (TENANT || "acme"), "stored as #{PeerItem.find(item.id).tenant_id}")
  item.update!(name: "ar!")  # AR updates only changed columns
  expect(PeerItem.where(name: "ar!").count == 1, "update")
  all = PeerItem.update_all("name = name")
  item.destroy!
  expect(PeerItem.count == all - 1, "count #{PeerItem.count} vs updated #{all}")
  expect(tenants_seen == before, "after: #{tenants_seen}")
end

exit($failures.zero? ? 0 : 2)
