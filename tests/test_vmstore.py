"""The host agent's on-disk store: VM memory images written and read back."""

from agents._vmstore import HostStore
from agents.host._memory import HostRam
from agents.migration_core import PAGE_SIZE_BYTES, page_content

MIB = 1 << 20


def test_memory_image_round_trip(tmp_path):
    ram = HostRam(16 * MIB)
    vm = ram.create_vm("vm1", [10], 500.0, 2 * MIB, seed=3)
    vm.guest.write(5, page_content(5, 9))
    vm.guest.poison_page(6)
    expected = bytearray(vm.memory_bytes)
    for page in range(vm.page_count):
        data = vm.guest.host.read_frame(vm.guest.host_frame(page))
        if data is not None:
            expected[page * PAGE_SIZE_BYTES:(page + 1) * PAGE_SIZE_BYTES] = data
    store = HostStore(str(tmp_path), "h1")

    store.save_vm(vm)
    (stored,) = store.load_vms()

    assert stored.memory == expected
    assert stored.memory[5 * PAGE_SIZE_BYTES:6 * PAGE_SIZE_BYTES] == page_content(5, 9)
    assert stored.memory[6 * PAGE_SIZE_BYTES:7 * PAGE_SIZE_BYTES] == bytes(PAGE_SIZE_BYTES)


def test_memory_runs_split_at_zero_pages_and_limit():
    ram = HostRam(16 * MIB)
    vm = ram.create_vm("vm1", [10], 500.0, 40 * PAGE_SIZE_BYTES, seed=1, fill=False)
    for page in (0, 1, 2, 3, 4, 9, 10):
        vm.guest.write(page, page_content(page, 1))

    runs = [(first, len(pages)) for first, pages in vm.memory_runs(max_pages=3)]

    assert runs == [(0, 3), (3, 2), (9, 2)]
