-- Wireshark dissector for the Serval Service Access Layer (SAL).
--
-- Decodes the SAL header as WIRE.md describes it (the format of the original
-- Serval prototype, NSDI 2012): the 12-byte base header, the CONTROL,
-- SERVICE, ADDRESS, SOURCE and PAD extensions, the header checksum (ones'
-- complement over the SAL header only) with its status, and hands the TCP or
-- UDP segment that follows to Wireshark's own dissectors.
--
-- Carriage: IPv4 protocol 144 (native) and UDP encapsulation on ports 54324
-- and 54325 (change them under Preferences > Protocols > SERVAL).
--
-- Install: copy this file to ~/.local/lib/wireshark/plugins/ (Wireshark 4.x;
-- `tshark -G folders` prints the folder), or load it for one run with
-- `tshark -X lua_script:tools/wireshark/serval.lua -r capture.pcap`.
-- Display filter name: `serval` (e.g. `serval.flags.syn == 1`,
-- `serval.service_id == 00:00:40:01:...`).

local serval = Proto("serval", "Serval Service Access Layer")

local ext_names = {
    [0] = "PAD", [1] = "CONTROL", [2] = "SERVICE", [3] = "ADDRESS", [4] = "SOURCE",
}
local proto_names = { [6] = "stream (TCP)", [17] = "datagram (UDP)" }
-- The checksum status values Wireshark uses for its own protocols.
local CHECKSUM_BAD, CHECKSUM_GOOD = 0, 1
local checksum_status_names = { [CHECKSUM_BAD] = "Bad", [CHECKSUM_GOOD] = "Good" }

local f = serval.fields
f.src_flow = ProtoField.uint32("serval.src_flow", "Source flow ID", base.HEX)
f.dst_flow = ProtoField.uint32("serval.dst_flow", "Destination flow ID", base.HEX)
f.shl = ProtoField.uint8("serval.shl", "Header length (32-bit words)", base.DEC)
f.protocol = ProtoField.uint8("serval.protocol", "Transport protocol", base.DEC, proto_names)
f.checksum = ProtoField.uint16("serval.checksum", "Checksum", base.HEX)
f.checksum_status = ProtoField.uint8("serval.checksum.status", "Checksum status", base.DEC,
    checksum_status_names)
f.checksum_calculated = ProtoField.uint16("serval.checksum_calculated", "Calculated checksum",
    base.HEX)
f.ext_type = ProtoField.uint8("serval.ext.type", "Extension type", base.DEC, ext_names, 0xf0)
f.ext_length = ProtoField.uint8("serval.ext.length", "Extension length", base.DEC)
f.pad = ProtoField.none("serval.pad", "Padding")
f.flags = ProtoField.uint8("serval.flags", "Control flags", base.HEX)
f.flag_syn = ProtoField.bool("serval.flags.syn", "SYN", 8, nil, 0x80)
f.flag_rsyn = ProtoField.bool("serval.flags.rsyn", "RSYN", 8, nil, 0x40)
f.flag_ack = ProtoField.bool("serval.flags.ack", "ACK", 8, nil, 0x20)
f.flag_nack = ProtoField.bool("serval.flags.nack", "NACK", 8, nil, 0x10)
f.flag_rst = ProtoField.bool("serval.flags.rst", "RST", 8, nil, 0x08)
f.flag_fin = ProtoField.bool("serval.flags.fin", "FIN", 8, nil, 0x04)
f.verno = ProtoField.uint32("serval.verno", "Version number", base.DEC)
f.ackno = ProtoField.uint32("serval.ackno", "Acknowledgement number", base.DEC)
f.nonce = ProtoField.bytes("serval.nonce", "Nonce")
f.service_id = ProtoField.bytes("serval.service_id", "Service ID")
f.address_verno = ProtoField.uint32("serval.address_verno", "Address version number", base.DEC)
f.address_ackno = ProtoField.uint32("serval.address_ackno", "Address acknowledgement number",
    base.DEC)
f.address = ProtoField.ipv4("serval.address", "Address")
f.source = ProtoField.ipv4("serval.source", "Source (path) address")

local e_bad_checksum = ProtoExpert.new("serval.checksum.bad.expert", "Bad SAL checksum",
    expert.group.CHECKSUM, expert.severity.ERROR)
local e_malformed = ProtoExpert.new("serval.malformed", "Malformed SAL header",
    expert.group.MALFORMED, expert.severity.ERROR)
serval.experts = { e_bad_checksum, e_malformed }

serval.prefs.udp_ports = Pref.range("UDP ports", "54324,54325",
    "UDP ports that carry UDP-encapsulated SAL packets", 65535)

local tcp_dissector = Dissector.get("tcp")
local udp_dissector = Dissector.get("udp")

-- Arithmetic instead of bit operators: Wireshark builds use Lua 5.1 to 5.4,
-- which disagree on those.

-- Ones' complement sum of the SAL header with the check field taken as 0.
local function header_checksum(tvb, hlen)
    local sum = 0
    for i = 0, hlen - 2, 2 do
        if i ~= 10 then
            sum = sum + tvb(i, 2):uint()
        end
    end
    while sum > 0xffff do
        sum = sum % 0x10000 + math.floor(sum / 0x10000)
    end
    return 0xffff - sum
end

local function flag_names(flags)
    local names = {}
    for _, pair in ipairs({ { 0x80, "SYN" }, { 0x40, "RSYN" }, { 0x20, "ACK" }, { 0x10, "NACK" },
        { 0x08, "RST" }, { 0x04, "FIN" } }) do
        if math.floor(flags / pair[1]) % 2 == 1 then
            names[#names + 1] = pair[2]
        end
    end
    return table.concat(names, ",")
end

local function malformed(item, pinfo, text)
    item:add_proto_expert_info(e_malformed, text)
    pinfo.cols.info:append(" [malformed: " .. text .. "]")
end

-- One extension at `off` (within the header of `hlen` bytes); returns the
-- offset of the next one, or nil when the header is malformed.
local function dissect_extension(tvb, pinfo, tree, off, hlen, info)
    local ftype = math.floor(tvb(off, 1):uint() / 16)
    if ftype == 0 then
        tree:add(f.pad, tvb(off, 1))
        return off + 1
    end
    if off + 2 > hlen then
        malformed(tree, pinfo, "extension header runs past the SAL header")
        return nil
    end
    local elen = tvb(off + 1, 1):uint()
    if elen < 2 or off + elen > hlen then
        malformed(tree, pinfo, "extension length " .. elen .. " is invalid")
        return nil
    end
    local et = tree:add(serval, tvb(off, elen), (ext_names[ftype] or ("type " .. ftype)) ..
        " extension")
    et:add(f.ext_type, tvb(off, 1))
    et:add(f.ext_length, tvb(off + 1, 1))
    if ftype == 1 and elen >= 20 then
        local flags = tvb(off + 2, 1):uint()
        local ft = et:add(f.flags, tvb(off + 2, 1))
        ft:append_text(" (" .. flag_names(flags) .. ")")
        for _, fl in ipairs({ f.flag_syn, f.flag_rsyn, f.flag_ack, f.flag_nack, f.flag_rst,
            f.flag_fin }) do
            ft:add(fl, tvb(off + 2, 1))
        end
        et:add(f.verno, tvb(off + 4, 4))
        et:add(f.ackno, tvb(off + 8, 4))
        et:add(f.nonce, tvb(off + 12, 8))
        info[#info + 1] = "[" .. flag_names(flags) .. "] verno=" .. tvb(off + 4, 4):uint() ..
            " ackno=" .. tvb(off + 8, 4):uint()
    elseif ftype == 2 and elen >= 36 then
        et:add(f.service_id, tvb(off + 4, 32))
        -- Text form of WIRE.md: hex, left-aligned, trailing zero digits dropped.
        local hex = tostring(tvb(off + 4, 32):bytes()):lower():gsub("0+$", "")
        info[#info + 1] = "service=" .. (hex == "" and "0" or hex)
    elseif ftype == 3 and elen >= 12 and (elen - 12) % 4 == 0 then
        et:add(f.address_verno, tvb(off + 4, 4))
        et:add(f.address_ackno, tvb(off + 8, 4))
        for a = off + 12, off + elen - 4, 4 do
            et:add(f.address, tvb(a, 4))
        end
    elseif ftype == 4 and elen >= 8 and (elen - 4) % 4 == 0 then
        local path = {}
        for a = off + 4, off + elen - 4, 4 do
            et:add(f.source, tvb(a, 4))
            path[#path + 1] = tostring(tvb(a, 4):ipv4())
        end
        if #path < 2 then
            malformed(et, pinfo, "SOURCE with fewer than two addresses")
        end
        info[#info + 1] = "source=" .. table.concat(path, ">")
    elseif ftype >= 1 and ftype <= 4 then
        malformed(et, pinfo, ext_names[ftype] .. " extension of length " .. elen)
    end
    return off + elen
end

function serval.dissector(tvb, pinfo, tree)
    local len = tvb:len()
    if len < 12 then
        return 0
    end
    local shl = tvb(8, 1):uint()
    local hlen = shl * 4
    pinfo.cols.protocol = "SERVAL"
    local st = tree:add(serval, tvb(0, math.min(math.max(hlen, 12), len)))
    st:add(f.src_flow, tvb(0, 4))
    st:add(f.dst_flow, tvb(4, 4))
    st:add(f.shl, tvb(8, 1)):append_text(" (" .. hlen .. " bytes)")
    local protocol = tvb(9, 1):uint()
    st:add(f.protocol, tvb(9, 1))
    pinfo.cols.info = string.format("SAL %08x -> %08x", tvb(0, 4):uint(), tvb(4, 4):uint())
    if hlen < 12 or hlen > len then
        st:add(f.checksum, tvb(10, 2))
        malformed(st, pinfo, "header length " .. hlen .. " outside 12.." .. len)
        return len
    end
    local wanted = header_checksum(tvb, hlen)
    local ck = st:add(f.checksum, tvb(10, 2))
    local good = wanted == tvb(10, 2):uint()
    st:add(f.checksum_calculated, tvb(10, 2), wanted):set_generated()
    st:add(f.checksum_status, tvb(10, 2), good and CHECKSUM_GOOD or CHECKSUM_BAD):set_generated()
    if good then
        ck:append_text(" [correct]")
    else
        ck:append_text(string.format(" [incorrect, should be 0x%04x]", wanted))
        ck:add_proto_expert_info(e_bad_checksum)
    end
    local info = {}
    local off = 12
    while off and off < hlen do
        off = dissect_extension(tvb, pinfo, st, off, hlen, info)
    end
    if #info > 0 then
        pinfo.cols.info:append(" " .. table.concat(info, " "))
    end
    if off and hlen < len and (protocol == 6 or protocol == 17) then
        -- The transport's dissector appends to this text instead of replacing it.
        pinfo.cols.info:append(" |")
        pinfo.cols.info:fence()
    end
    if off and hlen < len then
        local segment = tvb(hlen):tvb()
        if protocol == 6 then
            tcp_dissector:call(segment, pinfo, tree)
        elseif protocol == 17 then
            udp_dissector:call(segment, pinfo, tree)
        end
    end
    return len
end

local udp_table = DissectorTable.get("udp.port")
local registered_ports = serval.prefs.udp_ports

function serval.prefs_changed()
    udp_table:remove(registered_ports, serval)
    registered_ports = serval.prefs.udp_ports
    udp_table:add(registered_ports, serval)
end

DissectorTable.get("ip.proto"):add(144, serval)
udp_table:add(registered_ports, serval)
